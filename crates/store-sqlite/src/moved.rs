//! The chains that moved since the latest manifest: the writer notes each head it commits, and
//! appending a manifest forgets the heads it named. Only valid because one process owns the
//! file; a process starts with a full manifest, so what moved before it started is named too.

use std::collections::HashMap;
use std::sync::Mutex;

use selene_kms_core::{ChainHead, TenantId};
use selene_kms_store::backend::Head;

#[derive(Default)]
pub(crate) struct MovedHeads(Mutex<HashMap<TenantId, Head>>);

impl MovedHeads {
    pub(crate) fn note(&self, heads: &HashMap<TenantId, Head>) {
        if heads.is_empty() {
            return;
        }
        if let Ok(mut moved) = self.0.lock() {
            for (tenant, head) in heads {
                moved.insert(tenant.clone(), head.clone());
            }
        }
    }

    /// The heads that moved, sorted by tenant.
    pub(crate) fn list(&self) -> Vec<ChainHead> {
        let Ok(moved) = self.0.lock() else {
            return Vec::new();
        };
        let mut heads: Vec<ChainHead> = moved
            .iter()
            .map(|(tenant, head)| ChainHead {
                tenant_id: tenant.as_str().to_owned(),
                seq: head.seq,
                digest: head.digest.clone(),
            })
            .collect();
        heads.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
        heads
    }

    /// Forgets the heads a manifest named, unless the chain moved on since.
    pub(crate) fn manifested(&self, named: &[ChainHead]) {
        if let Ok(mut moved) = self.0.lock() {
            moved.retain(|tenant, head| {
                named
                    .binary_search_by(|h| h.tenant_id.as_str().cmp(tenant.as_str()))
                    .map_or(true, |i| named.get(i).is_none_or(|h| h.seq < head.seq))
            });
        }
    }
}
