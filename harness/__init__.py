"""Code shared by the tests (tests/) and the benchmark (bench/); never shipped.

- :mod:`harness.daemon`: ``twistd -n partysense-live`` as a real process on a
  port it binds itself (port 0), and :func:`~harness.daemon.wait_for`.
- :mod:`harness.faults`: breaking the database on purpose (a PostgreSQL of its
  own, a proxy that goes silent), seed clients, voters, a watch on /healthz,
  and the checks that nothing was lost.
- :mod:`harness.scenarios`: the database faults of tests/test_faults.py, which
  bench/recovery.py runs again to time the recovery.
- :mod:`harness.balancer`: HAProxy with contrib/'s configuration in front of
  several daemons (tests/test_scaleout.py).
- :mod:`harness.crowd`: hundreds of seed and v2 clients that reconnect by
  themselves, in one asyncio thread.

Neither tests/ nor bench/ is imported from here; both import this.
"""
