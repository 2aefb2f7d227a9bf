//! The auto traits of the public types and of the futures the methods return.

use singleflight::future::{Call, Checked, Detached, Group as AsyncGroup, TryCall};
use singleflight::sync::Group as SyncGroup;
use singleflight::{Error, Outcome};

fn send<T: Send>(_: &T) {}
fn sync<T: Sync>(_: &T) {}
fn is_static<T: 'static>(_: &T) {}

#[test]
fn groups_are_send_and_sync() {
    let g = SyncGroup::<String, Vec<u8>>::new();
    send(&g);
    sync(&g);
    let g = AsyncGroup::<String, Vec<u8>>::new();
    send(&g);
    sync(&g);
}

#[test]
fn owned_call_futures_are_send_and_static_when_key_value_and_work_are() {
    let g = AsyncGroup::<String, Vec<u8>>::new();
    let call: Call<'static, _, _, _, _, _> = g.call_owned("k".to_string(), || async { vec![1] });
    send(&call);
    is_static(&call);
    let try_call: TryCall<'static, _, _, _, _, _, _> = g
        .try_call_owned("k".to_string(), || async {
            Ok::<_, std::io::Error>(vec![1])
        });
    send(&try_call);
    is_static(&try_call);
    let checked: Checked<'static, _, _, _, _, _> =
        g.call_checked_owned("k".to_string(), || async { vec![1] });
    send(&checked);
    is_static(&checked);
}

#[test]
fn borrowed_call_futures_are_send() {
    let g = AsyncGroup::<String, Vec<u8>>::new();
    send(&g.call("k", || async { vec![1] }));
    send(&g.try_call("k", || async { Ok::<_, std::io::Error>(vec![1]) }));
    send(&g.call_checked("k", || async { vec![1] }));
}

#[test]
fn outcome_panicked_and_detached_auto_traits() {
    let out = SyncGroup::<u8, u8>::new().call(&1, || 2);
    send(&out);
    sync(&out);
    let _: &Outcome<u8> = &out;
    let err: Error = SyncGroup::<u8, u8>::new()
        .call_checked(&1, || panic!("x"))
        .unwrap_err();
    send(&err);
    let err: std::sync::Arc<std::io::Error> = SyncGroup::<u8, u8>::new()
        .try_call(&1, || Err(std::io::Error::other("x")))
        .unwrap_err();
    send(&err);
    sync(&err);
    fn detached_is_send(d: Detached) -> impl Send {
        d
    }
    let _ = detached_is_send;
}
