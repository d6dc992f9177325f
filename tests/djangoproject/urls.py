from django.urls import include, path

from tests.djangoproject import views

urlpatterns = [
    path("events/<int:event_id>/", views.event_page, name="event-page"),
    path("live/", include("partysense.djangoapp.urls")),
]
