//! Many task runs at once: `my_task.map(items)` and [`all`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::StreamExt;
use futures::future::BoxFuture;

use crate::task::{TaskCall, TaskError};

/// How many task runs of one map run at once unless [`MapCall::limit`] says otherwise.
pub const DEFAULT_MAP_LIMIT: usize = 1024;

/// Many task calls run concurrently; resolves to their results in input order.
///
/// On the first failure (in completion order) the task runs still in flight are cancelled
/// (recorded as `Cancelled`) and the error is returned.
#[must_use = "a map does nothing until it is awaited"]
pub struct MapCall<T> {
    calls: Option<Vec<TaskCall<T>>>,
    limit: usize,
    running: Option<BoxFuture<'static, Result<Vec<T>, TaskError>>>,
}

impl<T: Send + 'static> MapCall<T> {
    fn new(calls: Vec<TaskCall<T>>) -> Self {
        MapCall {
            calls: Some(calls),
            limit: DEFAULT_MAP_LIMIT,
            running: None,
        }
    }

    /// Runs at most `n` task runs at once (at least 1).
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = n.max(1);
        self
    }
}

impl<T: Send + 'static> Future for MapCall<T> {
    type Output = Result<Vec<T>, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.running.is_none() {
            let calls = self.calls.take().unwrap_or_default();
            let limit = self.limit;
            self.running = Some(Box::pin(async move {
                let n = calls.len();
                // Each call is spawned only when the window has room, so `limit` bounds how
                // many run at once. Results arrive in completion order, so the first failure
                // is seen at once; slots put them back in input order.
                let mut results = futures::stream::iter(calls.into_iter().enumerate())
                    .map(|(i, call)| {
                        let mut handle = call.submit();
                        handle.abort_on_drop = true;
                        async move { (i, handle.await) }
                    })
                    .buffer_unordered(limit);
                let mut slots: Vec<Option<T>> = std::iter::repeat_with(|| None).take(n).collect();
                while let Some((i, r)) = results.next().await {
                    // Returning drops `results`, whose handles abort the runs still in flight.
                    slots[i] = Some(r?);
                }
                Ok(slots.into_iter().flatten().collect())
            }));
        }
        match &mut self.running {
            Some(fut) => fut.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

/// Runs task calls concurrently and collects their results in order.
///
/// ```no_run
/// # #[weir::task] async fn add(a: i64, b: i64) -> anyhow::Result<i64> { Ok(a + b) }
/// # async fn f() -> anyhow::Result<()> {
/// let sums = weir::all([(1, 2), (3, 4)].map(|(a, b)| add(a, b))).limit(8).await?;
/// # Ok(()) }
/// ```
pub fn all<T: Send + 'static>(calls: impl IntoIterator<Item = TaskCall<T>>) -> MapCall<T> {
    MapCall::new(calls.into_iter().collect())
}

/// `my_task.map(items)`: one task run per item, concurrently, results in order.
/// For tasks of one argument; for more, see [`all`].
pub trait MapExt<I, T> {
    fn map<It: IntoIterator<Item = I>>(&self, items: It) -> MapCall<T>;
}

impl<F, I, T> MapExt<I, T> for F
where
    F: Fn(I) -> TaskCall<T>,
    T: Send + 'static,
{
    fn map<It: IntoIterator<Item = I>>(&self, items: It) -> MapCall<T> {
        MapCall::new(items.into_iter().map(self).collect())
    }
}
