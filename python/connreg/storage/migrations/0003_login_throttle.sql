-- Failed-login throttling shared by replicas (auth/shared_ratelimit.py): recent failures per
-- (account, source address) and the current lockout of a pair. Wall-clock UNIX seconds.
CREATE TABLE login_failures (
    account TEXT NOT NULL,
    source TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
CREATE INDEX login_failures_pair ON login_failures (account, source, at);
CREATE TABLE login_lockouts (
    account TEXT NOT NULL,
    source TEXT NOT NULL,
    locked_until DOUBLE PRECISION NOT NULL,
    lockouts INTEGER NOT NULL,
    PRIMARY KEY (account, source)
);
