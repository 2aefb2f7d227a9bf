//! The auto traits of the layer's types and of the futures and bodies it
//! returns: what servers (hyper, axum) need to spawn and share them.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use singleflight_tower::{Coalesce, CoalesceLayer, CoalescedBody, Error, ResponseFuture, Stats};
use tower::util::BoxCloneSyncService;

type Inner = BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

fn send<T: Send>() {}
fn sync<T: Sync>() {}
fn unpin<T: Unpin>() {}
fn clone<T: Clone>() {}
fn static_<T: 'static>() {}

#[test]
fn the_layer_and_the_service_can_be_shared_across_threads() {
    send::<CoalesceLayer>();
    sync::<CoalesceLayer>();
    clone::<CoalesceLayer>();
    send::<Coalesce<Inner>>();
    sync::<Coalesce<Inner>>();
    clone::<Coalesce<Inner>>();
    static_::<Coalesce<Inner>>();
    send::<Stats>();
    sync::<Stats>();
    send::<Error>();
    sync::<Error>();
}

#[test]
fn futures_and_bodies_can_be_spawned() {
    send::<ResponseFuture<Inner, Full<Bytes>>>();
    static_::<ResponseFuture<Inner, Full<Bytes>>>();
    unpin::<ResponseFuture<Inner, Full<Bytes>>>();
    send::<CoalescedBody<Full<Bytes>>>();
    unpin::<CoalescedBody<Full<Bytes>>>();
    static_::<CoalescedBody<Full<Bytes>>>();
}
