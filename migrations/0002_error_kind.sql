-- Each failed run records the kind of its failure (credentials, bad_request,
-- upstream_unavailable, bad_response, warehouse, configuration), so `status`, the exit code
-- and /metrics can tell a refused token from an outage.
ALTER TABLE chatetl.runs ADD COLUMN error_kind text;
COMMENT ON COLUMN chatetl.runs.error_kind IS 'kind of the first failure: credentials, bad_request, upstream_unavailable, bad_response, warehouse or configuration (NULL: none)';
