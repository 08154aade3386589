-- What runners report about a deployment; the newest one is the deployment's `status`.
CREATE TABLE deployment_statuses (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    deployment_id   TEXT NOT NULL REFERENCES deployments (id),
    state           TEXT NOT NULL,
    description     TEXT,
    log_url         TEXT,
    created_at      TEXT NOT NULL
);

CREATE INDEX deployment_statuses_deployment_seq ON deployment_statuses (deployment_id, seq DESC);

-- The list filters by these within a user's deployments.
CREATE INDEX deployments_user_project ON deployments (user_id, project, seq DESC);
