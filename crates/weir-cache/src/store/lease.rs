//! Leases: who is computing a key right now (serializable isolation across processes).

use crate::backend::{WriteMode, Written};
use crate::key::CacheKey;
use crate::store::layout::lease_dir;
use crate::store::{Lease, LeaseOutcome, LeaseRecord, Store, StoreError};

impl Store {
    pub(super) async fn current_lease(&self, key: &CacheKey) -> Result<Option<(u64, Option<LeaseRecord>)>, StoreError> {
        let mut gens: Vec<u64> = self
            .backend
            .list(&lease_dir(key))
            .await?
            .iter()
            .filter_map(|o| o.path.rsplit('/').next()?.parse().ok())
            .collect();
        gens.sort_unstable();
        let Some(&gen_) = gens.last() else { return Ok(None) };
        let rec = self
            .backend
            .read(&format!("{}{gen_:020}", lease_dir(key)))
            .await?
            .and_then(|raw| serde_json::from_slice(&raw).ok());
        Ok(Some((gen_, rec)))
    }

    pub(super) async fn try_lease_impl(
        &self,
        key: &CacheKey,
        holder: &str,
        ttl: i64,
        now: i64,
    ) -> Result<LeaseOutcome, StoreError> {
        // Generations make take-over safe with nothing but create-if-absent: whoever
        // creates generation n+1 of an expired lease n owns it, and only one can.
        let next = match self.current_lease(key).await? {
            None => 1,
            Some((gen_, Some(rec))) if rec.expires_at > now => {
                let _ = gen_;
                return Ok(LeaseOutcome::Held(rec));
            }
            // Expired, or unreadable (a holder killed mid-write): take it over.
            Some((gen_, _)) => gen_ + 1,
        };
        let rec = LeaseRecord {
            holder: holder.to_string(),
            expires_at: now + ttl,
        };
        let path = format!("{}{next:020}", lease_dir(key));
        match self
            .backend
            .write(&path, serde_json::to_vec(&rec)?, WriteMode::IfAbsent)
            .await?
        {
            Written::Created => {
                if next > 1 {
                    let _ = self
                        .backend
                        .delete(&format!("{}{:020}", lease_dir(key), next - 1))
                        .await;
                }
                Ok(LeaseOutcome::Acquired(Lease {
                    key: *key,
                    generation: next,
                    holder: holder.to_string(),
                }))
            }
            Written::Exists => {
                let rec = self
                    .backend
                    .read(&path)
                    .await?
                    .and_then(|raw| serde_json::from_slice(&raw).ok())
                    .unwrap_or(LeaseRecord {
                        holder: "another writer".into(),
                        expires_at: now + ttl,
                    });
                Ok(LeaseOutcome::Held(rec))
            }
        }
    }

    pub(super) async fn renew_impl(&self, lease: &Lease, ttl: i64, now: i64) -> Result<(), StoreError> {
        let rec = LeaseRecord {
            holder: lease.holder.clone(),
            expires_at: now + ttl,
        };
        let path = format!("{}{:020}", lease_dir(&lease.key), lease.generation);
        self.backend
            .write(&path, serde_json::to_vec(&rec)?, WriteMode::Overwrite)
            .await?;
        Ok(())
    }

    pub(super) async fn release_impl(&self, lease: &Lease) -> Result<(), StoreError> {
        let path = format!("{}{:020}", lease_dir(&lease.key), lease.generation);
        self.backend.delete(&path).await?;
        Ok(())
    }
}
