"""PostgreSQL: connections kept, the LISTEN source, the change log's SQL, the embedded server."""
