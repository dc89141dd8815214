"""The PostgreSQL stores' SQL, written once for :class:`~adapters.postgres.PostgresStore` and
:class:`~adapters.postgres_async.AsyncPostgresStore`: the schema, its migrations, and every
statement the stores send, so the two stores cannot drift apart.

The schema lives in a schema of its own (``fsm`` unless told otherwise), created and migrated
by the library on first use: :data:`MIGRATIONS` is the ordered list of changes, and the table
``fsm_schema`` records which were applied (version, description, when). A store that finds
the schema older than itself applies what is missing, in one transaction, under an advisory
lock (two workers starting together migrate once); a schema newer than the store is used as it
is (migrations only add, so a worker of the previous release keeps running beside the next).
The first start needs a role that may create the schema (CREATE on the database); later ones
only read ``fsm_schema`` and need nothing beyond the tables.

Tables (user keys and message ids are ``bytea``: any text, NUL included):

- ``sessions``: one row per user with anything stored. The session (``version``, ``tag``,
  ``payload``, ``expires_at``; ``payload`` NULL when there is none), the lease
  (``lease_owner``, ``lease_expires``), the sequence numbers of the user's history and seen
  ids, when the history expires, and ``keep_until``: the latest expiry of all of them, after
  which the row and everything hanging off it may be swept.
- ``history`` (``user_key``, ``seq``): the encoded entries, the write's tag beside each (a
  retried save looks for its own); the newest ``history_limit`` kept.
- ``seen`` (``user_key``, ``message_id``): a digest of each applied message id, its ``seq``
  (the newest ``dedupe_limit`` kept) and when it expires.
- ``quarantine``: bytes taken out of sessions, byte for byte, per user up to a limit.
- ``timers`` (``user_key``, ``armed``): the index of deadlines: ``due`` (NULL: not indexed),
  and a claim (``claim_until``, ``claim_due``), so an entry may be indexed and claimed at once.
- ``counters``: store-wide figures (sessions expired), sharded so writers seldom meet.

Indexes are those the statements use: sessions by ``keep_until`` and by ``expires_at`` (the
sweep, the count of expired sessions), seen ids by ``seq`` (trimming) and by expiry (the
sweep), the quarantine by user and by age, timers by ``due`` in claim order (a partial index:
claims and listings) and by the end of their claim.

Times are epoch seconds (``double precision``) from the store's clock, passed in as parameters:
the server's own ``now()`` decides nothing, so a test's fake clock expires sessions, leases,
history and message ids on PostgreSQL too.

The operations that must decide on fresh data after taking a row lock are PL/pgSQL functions
(``save``, ``lock_and_load``, ``quarantine``, ``claim_due``, ``settle_due``, ``sweep``), one
round trip each, one transaction each. Why functions and not one statement with CTEs: every
part of a statement reads the snapshot taken when it began. A save that waited for another's
row lock sees the row as that one left it, but the seen message ids as they were before it
committed; if the version came back to the expected one meanwhile (a save, then a delete), a
re-delivered message would be applied twice. Inside a function, each statement after the lock
reads what the lock's previous holder committed.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_SCHEMA",
    "LATEST",
    "MIGRATIONS",
    "Migration",
    "Statements",
    "Step",
    "check_schema_name",
    "migrate",
    "quote",
]

DEFAULT_SCHEMA = "fsm"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def check_schema_name(name: str) -> str:
    """``name`` if it can name the schema (letters, digits, underscores, at most 63, not
    starting with a digit), else ``ValueError``: it is written into SQL, quoted."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"schema name {name!r}: use letters, digits and underscores (at most 63, "
            "not starting with a digit)"
        )
    return name


# -- migration 1: the tables ---------------------------------------------------------------
_TABLES = """
CREATE TABLE {s}.sessions (
    user_key        bytea PRIMARY KEY,
    version         bigint NOT NULL DEFAULT 0,
    tag             text NOT NULL DEFAULT '',
    payload         bytea,
    expires_at      double precision NOT NULL DEFAULT 0,
    lease_owner     text,
    lease_expires   double precision NOT NULL DEFAULT 0,
    history_seq     bigint NOT NULL DEFAULT 0,
    history_expires double precision NOT NULL DEFAULT 0,
    seen_seq        bigint NOT NULL DEFAULT 0,
    keep_until      double precision NOT NULL DEFAULT 0
);
CREATE INDEX sessions_keep_until ON {s}.sessions (keep_until);
CREATE INDEX sessions_expiry ON {s}.sessions (expires_at) WHERE payload IS NOT NULL;

CREATE TABLE {s}.history (
    user_key bytea NOT NULL REFERENCES {s}.sessions ON DELETE CASCADE,
    seq      bigint NOT NULL,
    tag      text NOT NULL,
    entry    bytea NOT NULL,
    PRIMARY KEY (user_key, seq)
);

CREATE TABLE {s}.seen (
    user_key   bytea NOT NULL REFERENCES {s}.sessions ON DELETE CASCADE,
    message_id bytea NOT NULL,
    seq        bigint NOT NULL,
    expires_at double precision NOT NULL,
    PRIMARY KEY (user_key, message_id)
);
CREATE INDEX seen_by_seq ON {s}.seen (user_key, seq);
CREATE INDEX seen_expiry ON {s}.seen (expires_at);

CREATE TABLE {s}.quarantine (
    id       text PRIMARY KEY,
    user_key bytea NOT NULL,
    raw      bytea NOT NULL,
    reason   text NOT NULL,
    at       double precision NOT NULL,
    seq      bigint GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX quarantine_by_user ON {s}.quarantine (user_key, seq);
CREATE INDEX quarantine_by_age ON {s}.quarantine (at, id);

CREATE TABLE {s}.timers (
    user_key    bytea NOT NULL,
    armed       text COLLATE "C" NOT NULL,
    due         double precision,
    claim_until double precision,
    claim_due   double precision,
    PRIMARY KEY (user_key, armed)
);
CREATE INDEX timers_due ON {s}.timers (due, user_key, armed) WHERE due IS NOT NULL;
CREATE INDEX timers_claims ON {s}.timers (claim_until) WHERE claim_until IS NOT NULL;

CREATE TABLE {s}.counters (
    name  text NOT NULL,
    shard integer NOT NULL,
    value bigint NOT NULL,
    PRIMARY KEY (name, shard)
);
"""

# -- migration 2: the functions --------------------------------------------------------------
_COUNT = """
CREATE OR REPLACE FUNCTION {s}.add_to_counter(counter text, n bigint) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO {s}.counters AS c (name, shard, value)
    VALUES (counter, floor(random() * 16)::integer, n)
    ON CONFLICT (name, shard) DO UPDATE SET value = c.value + EXCLUDED.value
$$;
"""

# The writes a landed save adds beside the session: its history entry (a history that expired
# is dropped first) and its message id, each list trimmed to its limit by sequence number.
_REMEMBER = """
CREATE OR REPLACE FUNCTION {s}.remember(
    k bytea, new_tag text, hist bytea, hseq bigint, fresh boolean, history_limit integer,
    mid bytea, sseq bigint, seen_until double precision, dedupe_limit integer
) RETURNS void LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    IF hist IS NOT NULL THEN
        IF fresh THEN
            DELETE FROM {s}.history WHERE user_key = k;
        END IF;
        INSERT INTO {s}.history (user_key, seq, tag, entry) VALUES (k, hseq, new_tag, hist);
        DELETE FROM {s}.history WHERE user_key = k AND seq <= hseq - history_limit;
    END IF;
    IF mid IS NOT NULL THEN
        INSERT INTO {s}.seen AS s (user_key, message_id, seq, expires_at)
        VALUES (k, mid, sseq, seen_until)
        ON CONFLICT (user_key, message_id)
        DO UPDATE SET seq = EXCLUDED.seq, expires_at = EXCLUDED.expires_at;
        DELETE FROM {s}.seen WHERE user_key = k AND seq <= sseq - dedupe_limit;
    END IF;
END $$;
"""

# A user's first row, made by a save: INSERT ... ON CONFLICT DO NOTHING, so of two first saves
# one lands and the other finds the row. True if this one landed (with its history and id).
_CREATE_ROW = """
CREATE OR REPLACE FUNCTION {s}.create_row(
    k bytea, new_payload bytea, new_version bigint, new_tag text, expires double precision,
    owner text, lease_until double precision, hist bytea, history_limit integer,
    history_until double precision, mid bytea, dedupe_limit integer,
    seen_until double precision
) RETURNS boolean LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    INSERT INTO {s}.sessions (user_key, version, tag, payload, expires_at, lease_owner,
        lease_expires, history_seq, history_expires, seen_seq, keep_until)
    VALUES (k, new_version, new_tag, new_payload, expires,
        CASE WHEN lease_until IS NULL THEN NULL ELSE owner END, coalesce(lease_until, 0),
        CASE WHEN hist IS NULL THEN 0 ELSE 1 END,
        CASE WHEN hist IS NULL THEN 0 ELSE history_until END,
        CASE WHEN mid IS NULL THEN 0 ELSE 1 END,
        greatest(expires, lease_until, CASE WHEN hist IS NULL THEN 0 ELSE history_until END,
                 CASE WHEN mid IS NULL THEN 0 ELSE seen_until END))
    ON CONFLICT (user_key) DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM {s}.remember(k, new_tag, hist, 1, false, history_limit,
                         mid, 1, seen_until, dedupe_limit);
    RETURN true;
END $$;
"""

# A retried save: did this very write land already, its reply lost? Then 'saved' (taking the
# lease asked for, if it still can) or 'unleased'; NULL if it did not land.
_LANDED = """
CREATE OR REPLACE FUNCTION {s}.landed(
    cur {s}.sessions, now double precision, new_version bigint, new_tag text, hist bytea,
    owner text, lease_until double precision
) RETURNS text LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    mine boolean := cur.payload IS NOT NULL AND cur.expires_at > now
        AND cur.version = new_version AND cur.tag = new_tag;
BEGIN
    IF NOT mine AND (hist IS NULL OR NOT EXISTS (SELECT 1 FROM {s}.history AS h
            WHERE h.user_key = cur.user_key AND h.tag = new_tag)) THEN
        RETURN NULL;
    END IF;
    IF lease_until IS NULL THEN
        RETURN 'saved';
    END IF;
    IF mine AND (cur.lease_owner IS NULL OR cur.lease_expires <= now
                 OR cur.lease_owner = owner) THEN
        UPDATE {s}.sessions AS s SET lease_owner = owner, lease_expires = lease_until,
            keep_until = greatest(s.keep_until, lease_until)
        WHERE s.user_key = cur.user_key;
        RETURN 'saved';
    END IF;
    RETURN 'unleased';
END $$;
"""

# The compare-and-set. The row is locked first (or made, when there is none); every check
# after that reads what the lock's previous holder committed. Status: saved, unleased (saved,
# but the lease asked for is not the caller's), duplicate, locked, conflict, checked in that
# order; the current record comes back with the last three.
_SAVE = """
CREATE OR REPLACE FUNCTION {s}.save(
    k bytea, new_payload bytea, new_version bigint, expected bigint, new_tag text,
    expires double precision, now double precision, hist bytea, mid bytea, owner text,
    expected_tag text, lease_until double precision, do_release boolean, retried boolean,
    history_limit integer, history_until double precision, dedupe_limit integer,
    seen_until double precision
) RETURNS TABLE (status text, version bigint, tag text, payload bytea)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    cur {s}.sessions%ROWTYPE;
    got boolean := false;
    live boolean;
    held boolean;
    fresh boolean;
    outcome text;
BEGIN
    FOR attempt IN 1..5 LOOP
        SELECT * INTO cur FROM {s}.sessions AS s WHERE s.user_key = k FOR UPDATE;
        got := FOUND;
        EXIT WHEN got;
        IF expected = 0 AND {s}.create_row(k, new_payload, new_version, new_tag, expires,
                owner, lease_until, hist, history_limit, history_until, mid, dedupe_limit,
                seen_until) THEN
            outcome := 'saved';
        ELSIF expected <> 0 THEN
            outcome := 'conflict';  -- nothing stored
        END IF;
        IF outcome IS NOT NULL THEN
            RETURN QUERY SELECT outcome, NULL::bigint, NULL::text, NULL::bytea;
            RETURN;
        END IF;
    END LOOP;
    IF NOT got THEN
        RAISE EXCEPTION 'the row of this user kept changing' USING ERRCODE = '40001';
    END IF;
    IF retried THEN
        outcome := {s}.landed(cur, now, new_version, new_tag, hist, owner, lease_until);
        IF outcome IS NOT NULL THEN
            RETURN QUERY SELECT outcome, NULL::bigint, NULL::text, NULL::bytea;
            RETURN;
        END IF;
    END IF;

    live := cur.payload IS NOT NULL AND cur.expires_at > now;
    held := cur.lease_owner IS NOT NULL AND cur.lease_expires > now;
    IF mid IS NOT NULL AND EXISTS (SELECT 1 FROM {s}.seen AS e
            WHERE e.user_key = k AND e.message_id = mid AND e.expires_at > now) THEN
        outcome := 'duplicate';
    ELSIF held AND cur.lease_owner IS DISTINCT FROM owner THEN
        outcome := 'locked';
    ELSIF (CASE WHEN live THEN cur.version ELSE 0 END) <> expected
            OR (expected <> 0 AND expected_tag <> '' AND cur.tag <> expected_tag) THEN
        outcome := 'conflict';
    END IF;
    IF outcome IS NOT NULL THEN
        RETURN QUERY SELECT outcome, {current};
        RETURN;
    END IF;

    fresh := cur.history_expires <= now;
    UPDATE {s}.sessions AS s SET
        version = new_version, tag = new_tag, payload = new_payload, expires_at = expires,
        lease_owner = CASE WHEN do_release THEN NULL
                           WHEN lease_until IS NOT NULL THEN owner
                           WHEN held THEN cur.lease_owner END,
        lease_expires = CASE WHEN do_release THEN 0
                             WHEN lease_until IS NOT NULL THEN lease_until
                             WHEN held THEN cur.lease_expires ELSE 0 END,
        history_seq = CASE WHEN hist IS NULL THEN cur.history_seq
                           WHEN fresh THEN 1 ELSE cur.history_seq + 1 END,
        history_expires = CASE WHEN hist IS NULL THEN cur.history_expires
                               ELSE history_until END,
        seen_seq = CASE WHEN mid IS NULL THEN cur.seen_seq ELSE cur.seen_seq + 1 END,
        keep_until = greatest(s.keep_until, expires, lease_until,
                              CASE WHEN hist IS NULL THEN 0 ELSE history_until END,
                              CASE WHEN mid IS NULL THEN 0 ELSE seen_until END)
    WHERE s.user_key = k AND s.version = cur.version;
    IF cur.payload IS NOT NULL AND NOT live THEN  -- it replaces a session that expired
        PERFORM {s}.add_to_counter('expired_sessions', 1);
    END IF;
    PERFORM {s}.remember(k, new_tag, hist,
                         CASE WHEN fresh THEN 1 ELSE cur.history_seq + 1 END, fresh,
                         history_limit, mid, cur.seen_seq + 1, seen_until, dedupe_limit);
    RETURN QUERY SELECT 'saved'::text, NULL::bigint, NULL::text, NULL::bytea;
END $$;
"""
#: The current record, as the save function returns it beside a refusal.
_CURRENT = (
    "CASE WHEN live THEN cur.version END, CASE WHEN live THEN cur.tag END, "
    "CASE WHEN live THEN cur.payload END"
)

# Take the lease if it is free (or expired; or, on a retry, already the caller's), then read.
_LOCK_AND_LOAD = """
CREATE OR REPLACE FUNCTION {s}.lock_and_load(
    k bytea, owner text, lease_until double precision, now double precision, mid bytea,
    retried boolean
) RETURNS TABLE (taken boolean, version bigint, tag text, payload bytea, seen boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    got record;
BEGIN
    INSERT INTO {s}.sessions AS s (user_key, lease_owner, lease_expires, keep_until)
    VALUES (k, owner, lease_until, lease_until)
    ON CONFLICT (user_key) DO UPDATE
        SET lease_owner = EXCLUDED.lease_owner, lease_expires = EXCLUDED.lease_expires,
            keep_until = greatest(s.keep_until, EXCLUDED.keep_until)
        WHERE s.lease_owner IS NULL OR s.lease_expires <= now
            OR (retried AND s.lease_owner = owner)
    RETURNING s.version, s.tag, s.payload, s.expires_at INTO got;
    IF NOT FOUND THEN
        RETURN QUERY SELECT false, NULL::bigint, NULL::text, NULL::bytea, false;
        RETURN;
    END IF;
    IF got.payload IS NULL OR got.expires_at <= now THEN
        got.version := NULL;
        got.payload := NULL;
    END IF;
    RETURN QUERY SELECT true, got.version, got.tag, got.payload,
        mid IS NOT NULL AND EXISTS (SELECT 1 FROM {s}.seen AS e
            WHERE e.user_key = k AND e.message_id = mid AND e.expires_at > now);
END $$;
"""

# Move the session to the quarantine if it still holds exactly ``raw``; true if moved (or, on
# a retry, if this entry is there already).
_QUARANTINE = """
CREATE OR REPLACE FUNCTION {s}.quarantine(
    k bytea, want bytea, entry_id text, why text, now double precision, keep integer
) RETURNS boolean LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    cur record;
BEGIN
    IF EXISTS (SELECT 1 FROM {s}.quarantine AS q WHERE q.id = entry_id) THEN
        RETURN true;
    END IF;
    SELECT s.payload, s.expires_at INTO cur FROM {s}.sessions AS s
    WHERE s.user_key = k FOR UPDATE;
    IF NOT FOUND OR cur.payload IS NULL OR cur.expires_at <= now OR cur.payload <> want THEN
        RETURN false;
    END IF;
    UPDATE {s}.sessions AS s SET payload = NULL, version = 0, tag = '', expires_at = 0
    WHERE s.user_key = k;
    INSERT INTO {s}.quarantine (id, user_key, raw, reason, at)
    VALUES (entry_id, k, want, why, now);
    DELETE FROM {s}.quarantine AS q WHERE q.user_key = k AND q.seq <= (
        SELECT o.seq FROM {s}.quarantine AS o WHERE o.user_key = k
        ORDER BY o.seq DESC OFFSET keep LIMIT 1);
    RETURN true;
END $$;
"""

# Claims whose hold ran out come back due (at their own due, or now), then the soonest due
# entries are claimed; SKIP LOCKED keeps two claimers from ever taking the same entry.
_CLAIM_DUE = """
CREATE OR REPLACE FUNCTION {s}.claim_due(
    now double precision, lim integer, held_until double precision, max_returns integer
) RETURNS TABLE (user_key bytea, armed text, due double precision)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    UPDATE {s}.timers AS t SET due = least(t.claim_due, now), claim_until = NULL,
        claim_due = NULL
    FROM (SELECT o.user_key, o.armed FROM {s}.timers AS o WHERE o.claim_until <= now
          ORDER BY o.claim_until LIMIT max_returns FOR UPDATE SKIP LOCKED) AS r
    WHERE t.user_key = r.user_key AND t.armed = r.armed;
    RETURN QUERY
    UPDATE {s}.timers AS t SET due = NULL, claim_until = held_until, claim_due = t.due
    FROM (SELECT o.user_key, o.armed FROM {s}.timers AS o WHERE o.due <= now
          ORDER BY o.due, o.user_key, o.armed LIMIT lim FOR UPDATE SKIP LOCKED) AS c
    WHERE t.user_key = c.user_key AND t.armed = c.armed
    RETURNING t.user_key, t.armed, t.claim_due;
END $$;
"""

_SETTLE_DUE = """
CREATE OR REPLACE FUNCTION {s}.settle_due(keys bytea[], armeds text[]) RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    UPDATE {s}.timers AS t SET claim_until = NULL, claim_due = NULL
    FROM unnest(keys, armeds) AS x (user_key, armed)
    WHERE t.user_key = x.user_key AND t.armed = x.armed AND t.claim_until IS NOT NULL;
    DELETE FROM {s}.timers AS t USING unnest(keys, armeds) AS x (user_key, armed)
    WHERE t.user_key = x.user_key AND t.armed = x.armed
        AND t.due IS NULL AND t.claim_until IS NULL;
END $$;
"""

# One bounded sweep: rows with nothing alive left go (their history and seen ids with them,
# ON DELETE CASCADE), expired sessions of rows that live on lose their bytes, expired seen ids
# go. Rows another transaction holds are skipped, never waited for. Returns the rows removed.
_SWEEP = """
CREATE OR REPLACE FUNCTION {s}.sweep(now double precision, batch integer) RETURNS bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    gone bigint;
    expired bigint;
    cleared bigint;
    ids bigint;
BEGIN
    WITH dead AS (
        DELETE FROM {s}.sessions AS s WHERE s.user_key IN (
            SELECT o.user_key FROM {s}.sessions AS o WHERE o.keep_until <= now
            ORDER BY o.keep_until LIMIT batch FOR UPDATE SKIP LOCKED)
        RETURNING s.payload IS NOT NULL AS had_session
    )
    SELECT count(*), count(*) FILTER (WHERE had_session) INTO gone, expired FROM dead;
    UPDATE {s}.sessions AS s SET payload = NULL, version = 0, tag = '', expires_at = 0
    WHERE s.user_key IN (
        SELECT o.user_key FROM {s}.sessions AS o
        WHERE o.payload IS NOT NULL AND o.expires_at <= now
        ORDER BY o.expires_at LIMIT batch FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS cleared = ROW_COUNT;
    IF expired + cleared > 0 THEN
        PERFORM {s}.add_to_counter('expired_sessions', expired + cleared);
    END IF;
    DELETE FROM {s}.seen AS e USING (
        SELECT o.user_key, o.message_id FROM {s}.seen AS o WHERE o.expires_at <= now
        LIMIT batch FOR UPDATE SKIP LOCKED) AS x
    WHERE e.user_key = x.user_key AND e.message_id = x.message_id;
    GET DIAGNOSTICS ids = ROW_COUNT;
    RETURN gone + cleared + ids;
END $$;
"""


# -- migration 3: the messaging limit's count (adapters.whatsapp.limits_sql) ------------------
_LIMIT_TABLES = """
CREATE TABLE {s}.limit_counted (user_key text PRIMARY KEY, at double precision NOT NULL);
CREATE INDEX limit_counted_by_at ON {s}.limit_counted (at);
CREATE TABLE {s}.limit_waiting (user_key text PRIMARY KEY, since double precision NOT NULL);
CREATE INDEX limit_waiting_by_since ON {s}.limit_waiting (since, user_key);
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One change to the schema: its number, what it does, and its SQL (``{s}``: the quoted
    schema name)."""

    version: int
    description: str
    sql: str

    def for_schema(self, quoted: str) -> bytes:
        return self.sql.replace("{current}", _CURRENT).replace("{s}", quoted).encode()


#: Every change to the schema, in order. Append; never edit one that was released.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "sessions, history, seen ids, quarantine, timers, counters", _TABLES),
    Migration(
        2,
        "functions: save, lock_and_load, quarantine, claim_due, settle_due, sweep",
        _COUNT + _REMEMBER + _CREATE_ROW + _LANDED + _SAVE + _LOCK_AND_LOAD + _QUARANTINE
        + _CLAIM_DUE + _SETTLE_DUE + _SWEEP,
    ),
    Migration(3, "the WhatsApp transport's shared messaging-limit count", _LIMIT_TABLES),
)  # fmt: skip
LATEST = MIGRATIONS[-1].version


def quote(name: str) -> str:
    return '"' + check_schema_name(name) + '"'


#: One step of a migration: the SQL and its parameters; the driver sends back the rows.
Step = tuple[bytes, dict[str, Any] | None]


def migrate(schema: str) -> Generator[Step, list[tuple[Any, ...]], None]:
    """The statements that bring ``schema`` up to :data:`LATEST`, to run in ONE transaction
    on one connection: an advisory lock first (one migrator at a time), then whatever is
    missing. Each step is sent the rows it returned."""
    s = quote(schema)
    yield (
        b"SELECT pg_advisory_xact_lock(hashtextextended(%(lock)s, 0))",
        {"lock": f"convo-fsm schema {schema}"},
    )
    yield (
        (
            f"CREATE SCHEMA IF NOT EXISTS {s}; CREATE TABLE IF NOT EXISTS {s}.fsm_schema ("
            "version integer PRIMARY KEY, description text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        ).encode(),
        None,
    )
    rows = yield f"SELECT version FROM {s}.fsm_schema".encode(), None
    applied = {row[0] for row in rows}
    for migration in MIGRATIONS:
        if migration.version in applied:
            continue
        yield migration.for_schema(s), None
        record = f"INSERT INTO {s}.fsm_schema (version, description) VALUES (%(v)s, %(d)s)"
        yield record.encode(), {"v": migration.version, "d": migration.description}


class Statements:
    """Every statement a store sends, for one schema (named parameters, ``%(name)s``)."""

    def __init__(self, schema: str) -> None:
        s = self.quoted = quote(schema)
        self.schema = schema
        self.schema_table = f"{s}.fsm_schema"
        self.schema_exists = b"SELECT to_regclass(%(table)s) IS NOT NULL"
        self.schema_version = f"SELECT coalesce(max(version), 0) FROM {s}.fsm_schema".encode()
        live = "s.payload IS NOT NULL AND s.expires_at > %(now)s"
        self.load = (
            f"SELECT CASE WHEN {live} THEN s.version END, s.tag, "
            f"CASE WHEN {live} THEN s.payload END, "
            "coalesce(s.lease_owner IS NOT NULL AND s.lease_expires > %(now)s, false), "
            f"EXISTS (SELECT 1 FROM {s}.seen AS e WHERE e.user_key = %(k)s "
            "AND e.message_id = %(mid)s AND e.expires_at > %(now)s) "
            f"FROM (SELECT 1) AS one LEFT JOIN {s}.sessions AS s ON s.user_key = %(k)s"
        ).encode()
        self.save = (
            f"SELECT status, version, tag, payload FROM {s}.save(%(k)s::bytea, "
            "%(payload)s::bytea, %(version)s::bigint, %(expected)s::bigint, %(tag)s::text, "
            "%(expires)s::float8, %(now)s::float8, %(hist)s::bytea, %(mid)s::bytea, "
            "%(owner)s::text, %(expected_tag)s::text, %(lease_until)s::float8, "
            "%(release)s::boolean, %(retried)s::boolean, %(history_limit)s::integer, "
            "%(history_until)s::float8, %(dedupe_limit)s::integer, %(seen_until)s::float8)"
        ).encode()
        self.delete = (
            f"UPDATE {s}.sessions AS s SET payload = NULL, version = 0, tag = '', "
            f"expires_at = 0 WHERE s.user_key = %(k)s AND {live} RETURNING true"
        ).encode()
        self.ttl = (
            f"SELECT s.expires_at FROM {s}.sessions AS s WHERE s.user_key = %(k)s AND {live}"
        ).encode()
        self.history = (
            f"SELECT h.entry FROM {s}.history AS h JOIN {s}.sessions AS s "
            "ON s.user_key = h.user_key WHERE h.user_key = %(k)s "
            "AND s.history_expires > %(now)s ORDER BY h.seq DESC LIMIT %(limit)s"
        ).encode()
        self._locks(s)
        self._operator(s, live)
        self._timers(s)
        self._imports(s)

    def _imports(self, s: str) -> None:
        """The steps of an import of history entries (one transaction)."""
        self.history_has_tag = (
            f"SELECT 1 FROM {s}.history AS h WHERE h.user_key = %(k)s AND h.tag = %(tag)s"
        ).encode()
        self.history_head = (  # makes the row if there is none, and locks it
            f"INSERT INTO {s}.sessions AS s (user_key, keep_until) VALUES (%(k)s, %(until)s) "
            "ON CONFLICT (user_key) DO UPDATE SET keep_until = greatest(s.keep_until, "
            "EXCLUDED.keep_until) RETURNING s.history_seq, s.history_expires"
        ).encode()
        self.history_clear = f"DELETE FROM {s}.history WHERE user_key = %(k)s".encode()
        self.history_insert = (
            f"INSERT INTO {s}.history (user_key, seq, tag, entry) SELECT %(k)s, %(base)s + x.n, "
            "x.tag, x.entry FROM unnest(%(tags)s::text[], %(entries)s::bytea[]) "
            "WITH ORDINALITY AS x(tag, entry, n)"
        ).encode()
        self.history_set_head = (
            f"UPDATE {s}.sessions SET history_seq = %(last)s, history_expires = %(until)s "
            "WHERE user_key = %(k)s"
        ).encode()
        self.history_trim = (
            f"DELETE FROM {s}.history WHERE user_key = %(k)s AND seq <= %(last)s - %(limit)s"
        ).encode()

    def _locks(self, s: str) -> None:
        held = "s.lease_owner IS NOT NULL AND s.lease_expires > %(now)s"
        self.acquire_lock = (
            f"INSERT INTO {s}.sessions AS s (user_key, lease_owner, lease_expires, keep_until) "
            "VALUES (%(k)s, %(owner)s, %(until)s, %(until)s) ON CONFLICT (user_key) DO UPDATE "
            "SET lease_owner = EXCLUDED.lease_owner, lease_expires = EXCLUDED.lease_expires, "
            "keep_until = greatest(s.keep_until, EXCLUDED.keep_until) "
            "WHERE s.lease_owner IS NULL OR s.lease_expires <= %(now)s "
            "OR (%(retried)s AND s.lease_owner = %(owner)s) RETURNING true"
        ).encode()
        self.lock_and_load = (
            f"SELECT taken, version, tag, payload, seen FROM {s}.lock_and_load(%(k)s::bytea, "
            "%(owner)s::text, %(until)s::float8, %(now)s::float8, %(mid)s::bytea, "
            "%(retried)s::boolean)"
        ).encode()
        self.release_lock = (
            f"UPDATE {s}.sessions AS s SET lease_owner = NULL, lease_expires = 0 "
            f"WHERE s.user_key = %(k)s AND s.lease_owner = %(owner)s AND {held} RETURNING true"
        ).encode()
        self.extend_lock = (
            f"UPDATE {s}.sessions AS s SET lease_expires = %(until)s, "
            "keep_until = greatest(s.keep_until, %(until)s) "
            f"WHERE s.user_key = %(k)s AND s.lease_owner = %(owner)s AND {held} RETURNING true"
        ).encode()
        self.lock_info = (
            f"SELECT s.lease_owner, s.lease_expires FROM {s}.sessions AS s "
            f"WHERE s.user_key = %(k)s AND {held}"
        ).encode()
        self.quarantine = (
            f"SELECT {s}.quarantine(%(k)s::bytea, %(raw)s::bytea, %(id)s::text, "
            "%(reason)s::text, %(now)s::float8, %(keep)s::integer)"
        ).encode()

    def _operator(self, s: str, live: str) -> None:
        view = (
            "SELECT s.user_key, s.version, s.tag, s.payload, s.expires_at, s.lease_owner, "
            f"s.lease_expires FROM {s}.sessions AS s"
        )
        self.scan = (
            f"SELECT s.user_key FROM {s}.sessions AS s WHERE s.user_key >= %(from)s "
            f"AND {live} ORDER BY s.user_key LIMIT %(batch)s"
        ).encode()
        self.views = (
            f"{view} WHERE s.user_key >= %(from)s AND {live} ORDER BY s.user_key LIMIT %(batch)s"
        ).encode()
        self.view = f"{view} WHERE s.user_key = %(k)s AND {live}".encode()
        entry = "SELECT q.id, q.user_key, q.raw, q.reason, q.at"
        self.quarantined_all = f"{entry} FROM {s}.quarantine AS q ORDER BY q.at, q.id".encode()
        self.quarantined_of = (
            f"{entry} FROM {s}.quarantine AS q WHERE q.user_key = %(k)s ORDER BY q.at, q.id"
        ).encode()
        self.remove_quarantined = (
            f"DELETE FROM {s}.quarantine AS q WHERE q.user_key = %(k)s AND q.id = %(id)s "
            "RETURNING q.id, q.user_key, q.raw, q.reason, q.at"
        ).encode()
        self.stats = (
            f"SELECT (SELECT coalesce(sum(c.value), 0) FROM {s}.counters AS c "
            "WHERE c.name = 'expired_sessions') + (SELECT count(*) FROM "
            f"{s}.sessions AS s WHERE s.payload IS NOT NULL AND s.expires_at <= %(now)s)"
        ).encode()
        self.sweep = f"SELECT {s}.sweep(%(now)s::float8, %(batch)s::integer)".encode()

    def _timers(self, s: str) -> None:
        self.index_due = (
            f"INSERT INTO {s}.timers AS t (user_key, armed, due) VALUES (%(k)s, %(armed)s, "
            "%(due)s) ON CONFLICT (user_key, armed) DO UPDATE SET due = EXCLUDED.due"
        ).encode()
        self.claim_due = (
            f"SELECT user_key, armed, due FROM {s}.claim_due(%(now)s::float8, "
            "%(limit)s::integer, %(until)s::float8, %(returns)s::integer)"
        ).encode()
        self.settle_due = (f"SELECT {s}.settle_due(%(keys)s::bytea[], %(armeds)s::text[])").encode()
        self.due_stats = (
            "SELECT count(t.due), count(*) FILTER (WHERE t.due <= %(now)s), "
            f"count(t.claim_until), min(t.due) FROM {s}.timers AS t"
        ).encode()
        order = "ORDER BY t.due, t.user_key, t.armed"
        self.indexed_page = (
            f"SELECT t.user_key, t.armed, t.due FROM {s}.timers AS t WHERE t.due IS NOT NULL "
            f"AND (t.due, t.user_key, t.armed) > (%(due)s::float8, %(k)s::bytea, "
            f'%(armed)s::text COLLATE "C") {order} LIMIT %(batch)s'
        ).encode()
        self.indexed_first = (
            f"SELECT t.user_key, t.armed, t.due FROM {s}.timers AS t WHERE t.due IS NOT NULL "
            f"{order} LIMIT %(batch)s"
        ).encode()
        self.indexed_of = (
            f"SELECT t.user_key, t.armed, t.due FROM {s}.timers AS t WHERE t.user_key = %(k)s "
            f"AND t.due IS NOT NULL {order}"
        ).encode()
