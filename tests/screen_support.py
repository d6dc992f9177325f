"""What the pulse and projector tests of the live page share: a party of
twelve tracks with half an hour of votes behind it, and whether the page
shows the top 10 exactly (tests/test_screen_pulse.py,
tests/test_screen_projector.py, tests/test_screen_reranking.py).
"""

from __future__ import annotations

import math

from tests.browser import Screen
from tests.support import Party

NAMES = [("One More Time", "Daft Punk"), ("Blue Monday", "New Order"),
         ("Around the World", "Daft Punk"), ("Smalltown Boy", "Bronski Beat"),
         ("Groove Is in the Heart", "Deee-Lite"), ("Finally", "CeCe Peniston"),
         ("Music Sounds Better with You", "Stardust"), ("Show Me Love", "Robin S"),
         ("Rhythm Is a Dancer", "Snap!"), ("Sandstorm", "Darude"),
         ("Blue (Da Ba Dee)", "Eiffel 65"), ("Freed from Desire", "Gala")]


def half_an_hour_of_party(party: Party, event_id: int) -> list[int]:
    """Twelve tracks and their votes, spread over the last 28 minutes as a
    party builds up (the change log's commit times moved back, in seq order)."""
    tracks = [party.track(name, artist) for name, artist in NAMES]
    user = 0
    for index, track in enumerate(tracks):
        for vote in range(14 - index):
            user += 1
            party.vote(event_id, track, up=vote % 4 != 3, user_id=user)
    seqs = [seq for (seq,) in party.query(
        "SELECT seq FROM partysense_change WHERE event_id = %s ORDER BY seq", (event_id,))]
    # Sparse at first, busier lately, with a wave: minutes back from now.
    for position, seq in enumerate(seqs):
        share = position / len(seqs)
        back = 28 * (1 - math.sqrt(share)) + 0.8 * math.sin(share * 19)
        party.query("UPDATE partysense_change SET committed_at = now() - %s * interval '1 minute'"
                    " WHERE seq = %s", (max(0.0, back), seq))
    return tracks


def shows_the_top_ten(screen: Screen, party: Party, event_id: int) -> bool:
    """The page shows ten tracks with SQL's tallies, and none left out has more net votes."""
    tallies = party.tallies(event_id)
    shown = {int(tid): tuple(counts) for tid, counts in screen.shown_tallies().items()}
    net = {tid: up - down for tid, (up, down) in tallies.items()}
    left_out = [net[tid] for tid in tallies if tid not in shown]
    return (len(shown) == 10 and all(tallies.get(tid) == counts for tid, counts in shown.items())
            and min(net[tid] for tid in shown) >= max(left_out, default=-10**9))
