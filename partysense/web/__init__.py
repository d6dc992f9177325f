"""HTTP resources: the page, health, metrics, SSE, the pulse, /client.js, the status page."""
