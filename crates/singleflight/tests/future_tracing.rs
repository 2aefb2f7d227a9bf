//! With feature `tracing`, each flight of the async group is one span
//! (`singleflight.flight`) and each caller that waits on it has a span
//! (`singleflight.wait`) that follows from it: a trace shows who waited on
//! whom.
#![cfg(feature = "tracing")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use singleflight::future::Group;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Records the spans made (id, name) and the follows-from links.
#[derive(Default)]
struct Recorder {
    next: AtomicU64,
    spans: Mutex<Vec<(u64, &'static str)>>,
    links: Mutex<Vec<(u64, u64)>>,
}

struct Shared(Arc<Recorder>);

impl Subscriber for Shared {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.0.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.0
            .spans
            .lock()
            .expect("the spans")
            .push((id, span.metadata().name()));
        Id::from_u64(id)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, span: &Id, follows: &Id) {
        self.0
            .links
            .lock()
            .expect("the links")
            .push((span.into_u64(), follows.into_u64()));
    }
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn every_waiter_follows_from_its_flights_span() {
    let recorder = Arc::new(Recorder::default());
    let subscriber = Shared(Arc::clone(&recorder));
    tracing::subscriber::with_default(subscriber, || {
        let group = Group::<String, u32>::new();
        let (release, gate) = futures::channel::oneshot::channel::<()>();
        let mut gate = Some(gate);
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let gate = gate.take();
                group.call("k", move || async move {
                    if let Some(gate) = gate {
                        let _ = gate.await;
                    }
                    7
                })
            })
            .collect();
        futures::executor::block_on(async {
            let all = futures::future::join_all(calls);
            let release = async {
                // Every call has joined by the time this runs: join_all
                // polls them in order before this future.
                release.send(()).expect("the leader waits");
            };
            let (outcomes, ()) = futures::future::join(all, release).await;
            assert!(
                outcomes
                    .iter()
                    .all(|outcome| outcome.value == 7 && outcome.shared)
            );
        });
    });
    let spans = recorder.spans.lock().expect("the spans").clone();
    let flights: Vec<u64> = spans
        .iter()
        .filter(|(_, name)| *name == "singleflight.flight")
        .map(|(id, _)| *id)
        .collect();
    let waits: Vec<u64> = spans
        .iter()
        .filter(|(_, name)| *name == "singleflight.wait")
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(flights.len(), 1, "one flight: {spans:?}");
    assert_eq!(waits.len(), 3, "three waiters: {spans:?}");
    let mut links = recorder.links.lock().expect("the links").clone();
    links.sort_unstable();
    let expected: Vec<(u64, u64)> = waits.iter().map(|wait| (*wait, flights[0])).collect();
    assert_eq!(links, expected);
}
