//! Linearizability under faults: concurrent clients send messages to two inboxes and read
//! their sizes (linearizable reads) while the leader is partitioned away, healed, stopped and
//! restarted. Every invocation and return is recorded as it happens, one history per inbox,
//! and each history is checked with stateright's `LinearizabilityTester` against a counter:
//! a send adds one, a read returns the count. A call that failed or timed out stays "in
//! flight" (it may or may not have taken effect), and its client continues as a new thread.

use jochat_testkit as common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::*;
use jochat_node::config::Peer;
use jochat_node::raft::faults::Faults;
use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};
use tokio::net::TcpListener;

/// The sequential specification of one inbox's size.
#[derive(Debug, Clone, Default)]
struct InboxSize(usize);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Send,
    Size,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ret {
    Sent,
    Size(usize),
}

impl SequentialSpec for InboxSize {
    type Op = Op;
    type Ret = Ret;

    fn invoke(&mut self, op: &Op) -> Ret {
        match op {
            Op::Send => {
                self.0 += 1;
                Ret::Sent
            }
            Op::Size => Ret::Size(self.0),
        }
    }
}

type History = Arc<Mutex<LinearizabilityTester<u64, InboxSize>>>;

/// How many calls each client makes; small, as the check is an exhaustive search.
const CALLS: usize = 14;
const INBOXES: usize = 2;
const WRITERS_PER_INBOX: usize = 2;
/// The pause between one client's calls.
const PACE: Duration = Duration::from_millis(150);
/// Completed reads per inbox (of `CALLS`), at least: the faults cover part of the run only.
const COMPLETED_READS_MIN: usize = CALLS / 3;
/// Completed sends per inbox (of `CALLS * WRITERS_PER_INBOX`), at least.
const COMPLETED_SENDS_MIN: usize = CALLS / 2;

/// One client's calls against one inbox: `reader` reads the inbox's size as its owner,
/// otherwise sends to it. Thread ids are `client * 1000 + generation`; a failed call leaves
/// its thread in flight and the client moves to the next generation. Returns how many of its
/// calls completed.
async fn client(
    client: u64,
    reader: bool,
    token: String,
    inbox: String,
    addresses: Vec<String>,
    history: History,
) -> Completed {
    let mut router = Router::new(addresses);
    let mut generation = 0;
    let mut completed = Completed::default();
    let wait = Duration::from_secs(2);
    for call in 0..CALLS {
        let thread = client * 1000 + generation;
        let op = if reader { Op::Size } else { Op::Send };
        history.lock().unwrap().on_invoke(thread, op).unwrap();
        let result = if reader {
            router.inbox_size(&token, wait).await.map(Ret::Size)
        } else {
            let content = format!("c{client}-{call}");
            router
                .send(&token, &inbox, &content, "", wait)
                .await
                .map(|_| Ret::Sent)
        };
        match result {
            Ok(ret) => {
                history.lock().unwrap().on_return(thread, ret).unwrap();
                if reader {
                    completed.reads += 1;
                } else {
                    completed.sends += 1;
                }
            }
            Err(_) => generation += 1,
        }
        // Paced so that the calls span the whole fault schedule.
        tokio::time::sleep(PACE).await;
    }
    completed
}

/// Calls that returned, by kind.
#[derive(Debug, Default, Clone, Copy)]
struct Completed {
    reads: usize,
    sends: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_and_linearizable_reads_stay_linearizable_through_partitions_and_leader_stops() {
    // 1. Three nodes behind the fault layer; the inboxes' owners and the senders log in.
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup {
        faults: Faults::injectable(),
        ..Setup::default()
    };
    let (nodes, first, _) = led_by_node_1(dir.path(), 3, &setup).await;
    let addresses: Vec<String> = nodes.iter().map(|n| n.address.clone()).collect();
    let session = |name: String| {
        let first = first.clone();
        async move {
            first.sign_up(&name, "pw").await.unwrap();
            first
                .log_in(&name, "pw")
                .await
                .unwrap()
                .token
                .as_str()
                .to_owned()
        }
    };
    let histories: Vec<History> = (0..INBOXES)
        .map(|_| Arc::new(Mutex::new(LinearizabilityTester::new(InboxSize::default()))))
        .collect();
    let mut clients = Vec::new();
    let mut inboxes_of_clients = Vec::new();
    let mut id = 0;
    for (inbox, history) in histories.iter().enumerate() {
        let owner = format!("inbox{inbox}");
        let owner_token = session(owner.clone()).await;
        id += 1;
        clients.push(tokio::spawn(client(
            id,
            true,
            owner_token,
            owner.clone(),
            addresses.clone(),
            Arc::clone(history),
        )));
        inboxes_of_clients.push(inbox);
        for writer in 0..WRITERS_PER_INBOX {
            let token = session(format!("sender{inbox}x{writer}")).await;
            id += 1;
            clients.push(tokio::spawn(client(
                id,
                false,
                token,
                owner.clone(),
                addresses.clone(),
                Arc::clone(history),
            )));
            inboxes_of_clients.push(inbox);
        }
    }

    // 2. Meanwhile: the leader is cut off, then healed; then the new leader is stopped and
    //    restarted on its file.
    let mut nodes = nodes;
    let leader = running_leader(&nodes).await;
    setup.faults.isolate(
        leader,
        &[1, 2, 3]
            .into_iter()
            .filter(|&n| n != leader)
            .collect::<Vec<_>>(),
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    setup.faults.heal();
    let leader = running_leader(&nodes).await;
    let position = nodes.iter().position(|n| n.id == leader).unwrap();
    nodes.remove(position).stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let listener = TcpListener::bind(&addresses[leader as usize - 1])
        .await
        .unwrap();
    let peers = (1..=3)
        .filter(|&id| id != leader)
        .map(|id| Peer {
            id,
            address: addresses[id as usize - 1].clone(),
        })
        .collect();
    nodes.push(start_node(dir.path(), leader, listener, peers, &setup));
    let mut completed = [Completed::default(); INBOXES];
    for (client, inbox) in clients.into_iter().zip(inboxes_of_clients) {
        let done = client.await.unwrap();
        completed[inbox].reads += done.reads;
        completed[inbox].sends += done.sends;
    }

    // 3. Each inbox's history is linearizable, and holds enough completed calls of both
    //    kinds to say so: a history in which every call failed would be trivially
    //    linearizable.
    for (inbox, history) in histories.iter().enumerate() {
        let history = history.lock().unwrap();
        let done = completed[inbox];
        eprintln!(
            "inbox {inbox}: {} operations recorded; {} reads and {} sends completed",
            history.len(),
            done.reads,
            done.sends
        );
        assert!(
            done.reads >= COMPLETED_READS_MIN && done.sends >= COMPLETED_SENDS_MIN,
            "inbox {inbox}: only {done:?} calls completed (at least {COMPLETED_READS_MIN} \
             reads and {COMPLETED_SENDS_MIN} sends are needed for the check to mean anything)"
        );
        assert!(
            history.serialized_history().is_some(),
            "inbox {inbox}: the history is not linearizable: {history:?}"
        );
    }
    stop_all(nodes).await;
}

#[test]
fn the_checker_refuses_a_read_that_misses_a_completed_send() {
    // A send that returned before a read began must be seen by it.
    let mut history = LinearizabilityTester::new(InboxSize::default());
    history.on_invoke(1, Op::Send).unwrap();
    history.on_return(1, Ret::Sent).unwrap();
    history.on_invoke(2, Op::Size).unwrap();
    history.on_return(2, Ret::Size(0)).unwrap();
    assert!(!history.is_consistent());
    // Overlapping, either order is allowed; a failed send may or may not have happened.
    let mut history = LinearizabilityTester::new(InboxSize::default());
    history.on_invoke(1, Op::Send).unwrap();
    history.on_invoke(2, Op::Size).unwrap();
    history.on_invoke(3, Op::Send).unwrap();
    history.on_return(2, Ret::Size(0)).unwrap();
    history.on_return(1, Ret::Sent).unwrap();
    history.on_invoke(4, Op::Size).unwrap();
    history.on_return(4, Ret::Size(2)).unwrap();
    assert!(history.is_consistent());
}
