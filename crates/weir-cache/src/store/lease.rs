//! Leases: who is computing a key right now (serializable isolation across processes).
//!
//! A key's lease is a sequence of generations, `v1/leases/<key>/<generation>`: each file is
//! created only if absent and never rewritten, and the highest generation present is the
//! lease. Creating generation n+1 is the one arbiter for both ways a lease moves on:
//! - taking over an expired (or unreadable) generation n: whoever creates n+1 owns it;
//! - renewing generation n: its holder creates n+1 with a later expiry and the same token.
//!   If the name is taken, someone took the lease over: the holder has lost it.
//!
//! So a holder that stalled past its expiry can neither extend nor delete the next
//! holder's lease: its renewal loses the race for n+1 (or finds its generation gone), and
//! its release deletes only a file that still carries its token and is still the version
//! it read (`If-Match` on S3). Every acquisition has a random token, so when a key's
//! generations start again at 1 after a release, an old holder cannot mistake a new lease
//! for its own (no ABA). Whoever creates a generation lists the key's leases afterwards:
//! if a higher one exists (it stalled while the lease moved on twice), it backs off.

use crate::backend::Written;
use crate::key::CacheKey;
use crate::store::layout::lease_dir;
use crate::store::{Lease, LeaseOutcome, LeaseRecord, Renewal, Store, StoreError};

/// A random identity (UUIDv7: 74 random bits after a millisecond timestamp).
pub(crate) fn new_token() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

fn gen_path(key: &CacheKey, generation: u64) -> String {
    format!("{}{generation:020}", lease_dir(key))
}

/// How often `try_lease` lists again when the generation it listed vanished before it could
/// read it (the lease moved on meanwhile). Past that, the lease counts as held.
const RELIST: usize = 3;

impl Store {
    async fn generations(&self, key: &CacheKey) -> Result<Vec<u64>, StoreError> {
        let mut gens: Vec<u64> = self
            .backend
            .list(&lease_dir(key))
            .await?
            .iter()
            .filter_map(|o| o.path.rsplit('/').next()?.parse().ok())
            .collect();
        gens.sort_unstable();
        Ok(gens)
    }

    /// The record of a generation and its version, `None` if gone; an unreadable record
    /// (a holder killed mid-write on a backend without atomic writes) is `Some((None, _))`.
    async fn read_generation(
        &self,
        key: &CacheKey,
        generation: u64,
    ) -> Result<Option<(Option<LeaseRecord>, String)>, StoreError> {
        Ok(self
            .backend
            .read_versioned(&gen_path(key, generation))
            .await?
            .map(|(raw, version)| (serde_json::from_slice(&raw).ok(), version)))
    }

    /// A generation above `generation`, with its record, if one exists.
    async fn newer(&self, key: &CacheKey, generation: u64) -> Result<Option<Option<LeaseRecord>>, StoreError> {
        let Some(&top) = self.generations(key).await?.last() else {
            return Ok(None);
        };
        if top <= generation {
            return Ok(None);
        }
        Ok(Some(self.read_generation(key, top).await?.and_then(|(rec, _)| rec)))
    }

    /// Creates `generation` with `rec`; `Ok(None)` if it is ours, else the record of
    /// whoever has it (or has a higher generation).
    async fn claim(
        &self,
        key: &CacheKey,
        generation: u64,
        rec: &LeaseRecord,
    ) -> Result<Option<Option<LeaseRecord>>, StoreError> {
        let path = gen_path(key, generation);
        // Not made durable: after a power loss every lease has expired anyway (see
        // ARCHITECTURE.md, Invariants); create-if-absent stays atomic.
        match self.backend.create_volatile(&path, serde_json::to_vec(rec)?).await? {
            Written::Exists => Ok(Some(self.read_generation(key, generation).await?.and_then(|(r, _)| r))),
            Written::Created => match self.newer(key, generation).await? {
                None => Ok(None),
                Some(theirs) => {
                    // Ours is below theirs, so nobody else reads it: remove it.
                    self.backend.delete(&path).await?;
                    Ok(Some(theirs))
                }
            },
        }
    }

    pub(super) async fn try_lease_impl(
        &self,
        key: &CacheKey,
        holder: &str,
        ttl: i64,
        now: i64,
    ) -> Result<LeaseOutcome, StoreError> {
        let held = |rec: Option<LeaseRecord>| {
            LeaseOutcome::Held(rec.unwrap_or(LeaseRecord {
                holder: "another writer".into(),
                expires_at: now + ttl,
                token: String::new(),
                ttl,
            }))
        };
        // The generation to create, and the version of the one it takes over.
        let mut next = None;
        for _ in 0..RELIST {
            let Some(&top) = self.generations(key).await?.last() else {
                next = Some((1, None));
                break;
            };
            match self.read_generation(key, top).await? {
                Some((Some(rec), _)) if rec.expires_at > now => return Ok(LeaseOutcome::Held(rec)),
                // Expired, or unreadable: take it over.
                Some((_, version)) => {
                    next = Some((top + 1, Some(version)));
                    break;
                }
                // Renewed or released between the listing and the read: look again.
                None => continue,
            }
        }
        let Some((next, taken_over)) = next else {
            return Ok(held(None));
        };
        let rec = LeaseRecord {
            holder: holder.to_string(),
            expires_at: now + ttl,
            token: new_token(),
            ttl,
        };
        if let Some(theirs) = self.claim(key, next, &rec).await? {
            return Ok(held(theirs));
        }
        if let Some(version) = taken_over {
            // The generation we took over: nobody can create it again while ours exists. It
            // must still be the expired one we read. If its holder released it meanwhile and
            // someone acquired the key afresh (generations start again at 1), that path now
            // holds a live lease (ABA): it stays, and ours goes.
            let below = gen_path(key, next - 1);
            if let Ok(false) = self.backend.delete_if(&below, &version).await
                && let Some((theirs, _)) = self.read_generation(key, next - 1).await?
            {
                self.backend.delete(&gen_path(key, next)).await?;
                return Ok(held(theirs));
            }
        }
        Ok(LeaseOutcome::Acquired(Lease {
            key: *key,
            generation: next,
            holder: rec.holder,
            token: rec.token,
            expires_at: rec.expires_at,
        }))
    }

    pub(super) async fn renew_impl(&self, lease: &Lease, ttl: i64, now: i64) -> Result<Renewal, StoreError> {
        let key = &lease.key;
        let version = match self.read_generation(key, lease.generation).await? {
            Some((Some(rec), version)) if rec.token == lease.token => version,
            Some((rec, _)) => return Ok(Renewal::Lost(rec)),
            // Taken over (the new holder deleted ours), or released.
            None => {
                let current = match self.generations(key).await?.last() {
                    Some(&top) => self.read_generation(key, top).await?.and_then(|(r, _)| r),
                    None => None,
                };
                return Ok(Renewal::Lost(current));
            }
        };
        let rec = LeaseRecord {
            holder: lease.holder.clone(),
            expires_at: now + ttl,
            token: lease.token.clone(),
            ttl,
        };
        let next = lease.generation + 1;
        if let Some(theirs) = self.claim(key, next, &rec).await? {
            return Ok(Renewal::Lost(theirs));
        }
        // Our generation must still be the version we read: if it changed or went while we
        // created the next one, the key was taken over meanwhile (and maybe released and
        // acquired afresh, generations starting again at 1: ABA). Then ours is not a renewal.
        if let Ok(false) = self.backend.delete_if(&gen_path(key, lease.generation), &version).await {
            // A failed delete leaves a generation nobody renews: it expires.
            let _ = self.backend.delete(&gen_path(key, next)).await;
            let theirs = self.read_generation(key, lease.generation).await?.and_then(|(r, _)| r);
            return Ok(Renewal::Lost(theirs));
        }
        Ok(Renewal::Renewed(Lease {
            generation: next,
            expires_at: rec.expires_at,
            ..lease.clone()
        }))
    }

    /// Deletes the lease only if it is still ours: `false` if someone else holds the key now.
    pub(super) async fn release_impl(&self, lease: &Lease) -> Result<bool, StoreError> {
        match self.read_generation(&lease.key, lease.generation).await? {
            Some((Some(rec), version)) if rec.token == lease.token => Ok(self
                .backend
                .delete_if(&gen_path(&lease.key, lease.generation), &version)
                .await?),
            _ => Ok(false),
        }
    }

    /// Whether leases here are exclusive: create-if-absent measured atomic (see
    /// [`crate::backend::Backend::probe_atomic`]).
    pub(super) async fn atomic_leases_impl(&self) -> Result<bool, StoreError> {
        Ok(self.backend.probe_atomic().await?)
    }
}
