//! An injectable fault layer for the peer-to-peer network, for tests: [`Faults`] says, for each
//! ordered pair of nodes, whether a call from one to the other is delivered, dropped before it
//! arrives, delivered with its reply dropped, or delayed.
//!
//! Every node of an in-process cluster is given the same [`Faults`] (see
//! `jochat_node::server::serve_with`); each consults it before every Raft call and every
//! election probe it sends, with itself as the sender. A partition is a set of drops in both
//! directions. Production nodes use [`Faults::none`], which is never consulted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What happens to one call from one node to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The call never reaches the peer; the sender sees the peer as unreachable.
    Drop,
    /// The peer receives and handles the call, but the reply is lost on its way back.
    DropReply,
    /// The call is delivered after this delay.
    Delay(Duration),
}

/// The fault on each faulty link, keyed by (sender, receiver).
type Table = HashMap<(u64, u64), Fault>;

/// A fault for the next write of one node's storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFault {
    /// The next commit fails as a failed fsync does, writing nothing
    /// ([`Faults::fail_next_write`]).
    Fail,
    /// The next durable commit waits this long first, as on a slow disk
    /// ([`Faults::stall_next_write`]).
    Stall(Duration),
    /// The next commit without an fsync (an apply's) waits this long once its statements
    /// have run ([`Faults::stall_next_apply_commit`]).
    StallLazy(Duration),
}

/// Injects a [`StorageFault`] into one node's storage.
pub type WriteFault = Arc<dyn Fn(StorageFault) + Send + Sync>;

/// The faults between chosen pairs of nodes, and the storage faults of each node. Cheap to
/// clone; clones share the table.
#[derive(Clone, Default)]
pub struct Faults {
    /// `None` for a production node: no table, nothing to consult.
    table: Option<Arc<Mutex<Table>>>,
    /// How to make each node's next storage write fail, as the nodes register themselves.
    storage: Option<Arc<Mutex<HashMap<u64, WriteFault>>>>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl Faults {
    /// No faults, ever (a production node).
    pub fn none() -> Self {
        Self::default()
    }

    /// An empty table that faults can be added to later.
    pub fn injectable() -> Self {
        Self {
            table: Some(Arc::default()),
            storage: Some(Arc::default()),
        }
    }

    /// Node `node` tells how to inject faults into its storage (nothing for a production
    /// node).
    pub fn register_storage(&self, node: u64, fault: WriteFault) {
        if let Some(storage) = &self.storage {
            storage
                .lock()
                .expect("the storage fault table's mutex is never held across a panic")
                .insert(node, fault);
        }
    }

    /// Makes the next commit of node `node`'s storage fail as a failed fsync does, writing
    /// nothing; returns whether the node had registered.
    pub fn fail_next_write(&self, node: u64) -> bool {
        self.storage_fault(node, StorageFault::Fail)
    }

    /// Makes the next durable commit of node `node`'s storage wait `pause` first (a slow
    /// fsync); returns whether the node had registered.
    pub fn stall_next_write(&self, node: u64, pause: Duration) -> bool {
        self.storage_fault(node, StorageFault::Stall(pause))
    }

    /// Makes node `node`'s next commit without an fsync (an apply's) wait `pause` once its
    /// statements have run; returns whether the node had registered.
    pub fn stall_next_apply_commit(&self, node: u64, pause: Duration) -> bool {
        self.storage_fault(node, StorageFault::StallLazy(pause))
    }

    fn storage_fault(&self, node: u64, injected: StorageFault) -> bool {
        let fault = self.storage.as_ref().and_then(|storage| {
            storage
                .lock()
                .expect("the storage fault table's mutex is never held across a panic")
                .get(&node)
                .cloned()
        });
        fault.map(|fault| fault(injected)).is_some()
    }

    fn with_table(&self, change: impl FnOnce(&mut Table)) {
        if let Some(table) = &self.table {
            change(
                &mut table
                    .lock()
                    .expect("the fault table's mutex is never held across a panic"),
            );
        }
    }

    /// Sets what happens to calls from `from` to `to`.
    pub fn set(&self, from: u64, to: u64, fault: Fault) {
        self.with_table(|table| {
            table.insert((from, to), fault);
        });
    }

    /// Lets calls from `from` to `to` through again.
    pub fn clear(&self, from: u64, to: u64) {
        self.with_table(|table| {
            table.remove(&(from, to));
        });
    }

    /// Cuts every link between a node of `side_a` and a node of `side_b`, both directions.
    pub fn partition(&self, side_a: &[u64], side_b: &[u64]) {
        self.with_table(|table| {
            for &a in side_a {
                for &b in side_b {
                    table.insert((a, b), Fault::Drop);
                    table.insert((b, a), Fault::Drop);
                }
            }
        });
    }

    /// Cuts every link of `node`, both directions, to each of `others`.
    pub fn isolate(&self, node: u64, others: &[u64]) {
        self.partition(&[node], others);
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.with_table(HashMap::clear);
    }

    /// What happens to a call from `from` to `to` now.
    pub fn between(&self, from: u64, to: u64) -> Option<Fault> {
        let table = self.table.as_ref()?;
        table
            .lock()
            .expect("the fault table's mutex is never held across a panic")
            .get(&(from, to))
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_cuts_both_directions_and_heal_restores_them() {
        let faults = Faults::injectable();
        faults.partition(&[1], &[2, 3]);
        assert_eq!(faults.between(1, 2), Some(Fault::Drop));
        assert_eq!(faults.between(3, 1), Some(Fault::Drop));
        assert_eq!(faults.between(2, 3), None);
        faults.heal();
        assert_eq!(faults.between(1, 2), None);
    }

    #[test]
    fn the_production_table_never_faults() {
        let faults = Faults::none();
        faults.set(1, 2, Fault::Drop);
        assert_eq!(faults.between(1, 2), None);
    }
}
