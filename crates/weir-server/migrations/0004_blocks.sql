-- Blocks: named, typed, versioned configuration documents. No semicolons in comments: statements are split on them.
-- Registered block types (the built-in ones live in the code).
CREATE TABLE block_types (
    name         TEXT PRIMARY KEY,
    schema       TEXT NOT NULL,
    description  TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
-- Every saved version of every block. data holds the document with secret fields masked,
-- secrets their encrypted values (a JSON list of pointer and ciphertext pairs).
CREATE TABLE blocks (
    block_type  TEXT NOT NULL,
    name        TEXT NOT NULL,
    version     BIGINT NOT NULL,
    data        TEXT NOT NULL,
    secrets     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (block_type, name, version)
);
-- One row: the fingerprint of the key the secrets are encrypted with. Block writes lock it,
-- so they queue behind a key rotation and never mix two keys.
CREATE TABLE block_secret_key (
    id           BIGINT PRIMARY KEY,
    fingerprint  TEXT NOT NULL
)
