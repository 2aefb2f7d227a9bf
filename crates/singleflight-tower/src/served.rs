//! Where a response came from, as the layer tells whoever reads its
//! responses (an access log, metrics).

/// Where a response of [`Coalesce`](crate::Coalesce) came from; every
/// response the layer gives to a `GET` or `HEAD` request carries one in its
/// extensions, and so do the others (as [`Served::Bypass`]).
///
/// # Examples
///
/// ```
/// use singleflight_tower::Served;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tower::ServiceExt;
/// let service = singleflight_tower::Coalesce::new(tower::service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
/// }));
/// let response = service.oneshot(http::Request::new(String::new())).await.unwrap();
/// assert_eq!(response.extensions().get::<Served>(), Some(&Served::Leader));
/// assert_eq!(Served::Leader.as_str(), "leader");
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Served {
    /// Its request went upstream for a flight (alone or with others).
    Leader,
    /// It waited for, or joined, another request's flight.
    Follower,
    /// A kept response, fresh.
    Memo,
    /// A kept response past its lifetime: while a refresh runs
    /// (stale-while-revalidate) or because the upstream failed
    /// (stale-if-error).
    Stale,
    /// Its own request went upstream, not coalesced: another method, opted
    /// out, private, or sent after all (a private or varying flight, a wait
    /// past its limit).
    Bypass,
}

impl Served {
    /// Every kind, in a fixed order (for metrics labels).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(singleflight_tower::Served::ALL.len(), 5);
    /// ```
    pub const ALL: [Served; 5] = [
        Served::Leader,
        Served::Follower,
        Served::Memo,
        Served::Stale,
        Served::Bypass,
    ];

    /// Its name in lower case: `leader`, `follower`, `memo`, `stale`,
    /// `bypass`.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(singleflight_tower::Served::Stale.as_str(), "stale");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Served::Leader => "leader",
            Served::Follower => "follower",
            Served::Memo => "memo",
            Served::Stale => "stale",
            Served::Bypass => "bypass",
        }
    }
}
