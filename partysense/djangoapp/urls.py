"""``path("live/", include("partysense.djangoapp.urls"))``: the token view,
named ``partysense_live:token``."""

from django.urls import path

from partysense.djangoapp import views

app_name = "partysense_live"

urlpatterns = [
    path("events/<int:event_id>/token", views.token, name="token"),
]
