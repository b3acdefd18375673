//! The tables, versioned: each migration runs once, in order, at start, under a lock so that
//! nodes starting together do not race. The rows hold the same bytes as the embedded store's
//! (entries, payloads, heads, index rows), so the two copy into each other and verify alike;
//! the plain columns beside them (`session`, `kind`, `first_idx`) only serve queries and are
//! never trusted.

use postgres::Client;

use super::pool::Failed;

/// The schema everything lives in.
pub const SCHEMA: &str = "sluice";

const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "
    CREATE TABLE sluice.entries (
        idx bigint PRIMARY KEY,
        session text NOT NULL,
        kind text NOT NULL,
        stored bytea NOT NULL
    );
    CREATE INDEX entries_by_session ON sluice.entries (session, idx);
    CREATE TABLE sluice.payloads (idx bigint PRIMARY KEY, body bytea NOT NULL);
    CREATE TABLE sluice.checkpoints (idx bigint PRIMARY KEY, head bytea NOT NULL);
    -- The chain's end: every commit locks this one row, so appends from every node are
    -- serialized into one order, a group commit at a time.
    CREATE TABLE sluice.chain_head (
        one int PRIMARY KEY CHECK (one = 1),
        idx bigint,
        hash bytea,
        head bytea
    );
    INSERT INTO sluice.chain_head (one) VALUES (1);
    CREATE TABLE sluice.sessions (
        id text PRIMARY KEY,
        first_idx bigint NOT NULL,
        row bytea NOT NULL
    );
    CREATE TABLE sluice.reviews (id text PRIMARY KEY, row bytea NOT NULL);
    CREATE TABLE sluice.connections (name text PRIMARY KEY, row bytea NOT NULL);
    CREATE TABLE sluice.sink_cursors (name text PRIMARY KEY, next bigint NOT NULL);
    CREATE TABLE sluice.meta (key text PRIMARY KEY, value bytea NOT NULL);
    -- Gateway nodes and the keys they sign heads with (announced in the chain too).
    CREATE TABLE sluice.nodes (
        node text PRIMARY KEY,
        public_key bytea NOT NULL,
        started_ms bigint NOT NULL
    );
    ",
    ),
    (
        2,
        "
    -- Membership: each node beats; a lapsed one is claimed (gone_ms) by one survivor.
    ALTER TABLE sluice.nodes
        ADD COLUMN instance text,
        ADD COLUMN beat_ms bigint,
        ADD COLUMN gone_ms bigint;
    -- Work one gateway does for all (a sink): held by one run at a time, until it lapses.
    CREATE TABLE sluice.leases (
        name text PRIMARY KEY,
        holder text NOT NULL,
        until_ms bigint NOT NULL
    );
    ",
    ),
    (
        3,
        "
    -- Open sessions and the node that holds each (kept with the commits that open and close
    -- them): every node lists them, and a kill finds its way to the holder.
    CREATE TABLE sluice.live (session text PRIMARY KEY, node text NOT NULL);
    ",
    ),
    (
        4,
        "
    -- Payloads moved to the bucket ([store.payloads]): the row keeps where the bytes went
    -- (a slice of an object) instead of the bytes. The move is chained as an entry.
    ALTER TABLE sluice.payloads
        ALTER COLUMN body DROP NOT NULL,
        ADD COLUMN session text,
        ADD COLUMN object text,
        ADD COLUMN at bigint,
        ADD COLUMN len bigint;
    UPDATE sluice.payloads p SET session = e.session FROM sluice.entries e WHERE e.idx = p.idx;
    -- What is still to move, by session, found without reading what has moved or what never
    -- moves (the gateway's own events, which belong to no session).
    CREATE INDEX payloads_unmoved ON sluice.payloads (session, idx)
        WHERE object IS NULL AND session <> '';
    -- The bucket's objects; those of purged sessions are doomed until deleted there.
    CREATE TABLE sluice.objects (
        key text PRIMARY KEY,
        session text NOT NULL,
        doomed_ms bigint
    );
    CREATE INDEX objects_by_session ON sluice.objects (session);
    ",
    ),
    (
        5,
        "
    -- Agents through any node: where each node is reached (the certificate it serves
    -- there is pinned), enrollments shared by all, and which node holds each agent's tunnel.
    ALTER TABLE sluice.nodes ADD COLUMN address text, ADD COLUMN certificate_sha256 bytea;
    CREATE TABLE sluice.agents (name text PRIMARY KEY, row bytea NOT NULL);
    CREATE TABLE sluice.agent_tunnels (
        agent text PRIMARY KEY,
        node text NOT NULL,
        since_ms bigint NOT NULL
    );
    ",
    ),
];

/// Brings the schema up to date; returns the version it is at.
pub fn migrate(client: &mut Client) -> Result<i32, Failed> {
    let mut txn = client.transaction()?;
    // One node migrates at a time; the others wait, then find nothing left to do. The
    // server's notices ("already exists, skipping") say nothing worth logging at every start.
    txn.batch_execute("SET LOCAL client_min_messages = warning")?;
    txn.execute("SELECT pg_advisory_xact_lock(7365727631)", &[])?;
    txn.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {SCHEMA};
         CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_version (version int NOT NULL);"
    ))?;
    let current: i32 = txn
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {SCHEMA}.schema_version"),
            &[],
        )?
        .get(0);
    let newest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if current > newest {
        return Err(Failed::Unreachable(format!(
            "the database's schema is version {current}, newer than this gateway knows ({newest}): upgrade the gateway"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        txn.batch_execute(sql)?;
        txn.execute(
            &format!("INSERT INTO {SCHEMA}.schema_version (version) VALUES ($1)"),
            &[version],
        )?;
        tracing::info!(version, "record schema migrated");
    }
    txn.commit()?;
    Ok(newest)
}
