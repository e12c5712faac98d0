//! The request budget of every API route (`/v1`, `/admin`, `/mcp`): a place
//! among the requests in flight (or 503 at once), a deadline for the answer
//! to start, and, for the body that follows, a total time limit.
//!
//! A response can outlive its handler: an export streams for as long as the
//! client reads. So the places a request took, the server's and its user's,
//! travel with the response body and are given back when the body ends or
//! is dropped, not when the handler returns; and the body fails once the
//! stream limit has passed since the request began. A client that stops
//! reading is cut off by the connection's stall limit ([`crate::listener`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use super::AppState;
use crate::error::ApiError;
use crate::limits::{HeldSlots, InFlight};

/// Sheds load beyond the in-flight cap, bounds the time to the answer, and
/// hands the request's places to the answer's body.
pub async fn bounded(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let began = Instant::now();
    let Ok(permit) = state.in_flight.clone().try_acquire_owned() else {
        return ApiError::Overloaded.into_response();
    };
    let held = HeldSlots::new(permit, state.in_flight.clone());
    request.extensions_mut().insert(held.clone());
    let response = match tokio::time::timeout(state.limits.request_timeout, next.run(request)).await
    {
        Ok(response) => response,
        Err(_) => return ApiError::Timeout.into_response(),
    };
    let deadline = began + state.limits.stream_timeout;
    let (permit, slots) = held.take();
    response.map(|body| {
        Body::new(Held {
            inner: body,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            _permit: permit,
            _slots: slots,
        })
    })
}

/// A response body that holds its request's places until it ends, and fails
/// once its deadline has passed.
struct Held {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
    _permit: Option<OwnedSemaphorePermit>,
    _slots: Vec<Arc<InFlight>>,
}

impl HttpBody for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            tracing::warn!("a response passed the stream time limit; cut short");
            return Poll::Ready(Some(Err(axum::Error::new(
                "the response passed its time limit",
            ))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
