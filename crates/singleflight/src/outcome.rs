/// What a call returns: the flight's value and whether it was shared.
///
/// # Examples
///
/// ```
/// use singleflight::sync::Group;
///
/// let group = Group::<String, u64>::new();
/// let out = group.call("answer".to_string(), || 42);
/// assert_eq!(out.value, 42);
/// assert!(!out.shared); // nobody else asked for "answer" meanwhile
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outcome<T> {
    /// The flight's result; followers receive a clone of the leader's.
    pub value: T,
    /// Go's `shared`: true for every caller of a flight that had more than
    /// one caller (the leader included), false for a caller that was alone.
    pub shared: bool,
}

impl<T> Outcome<T> {
    pub(crate) const fn new(value: T, shared: bool) -> Self {
        Self { value, shared }
    }

    /// The value, dropping the shared flag.
    pub fn into_value(self) -> T {
        self.value
    }
}
