//! The only module that touches `wasi:http`: sends a [`Request`] and reads a
//! bounded [`Answer`].

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::exchange::{Answer, Request, Timeouts, TransportError, MAX_ANSWER_BYTES};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingResponse, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasip2::io::streams::StreamError;

/// `blocking-write-and-flush` takes at most 4096 bytes a call.
const WRITE_CHUNK: usize = 4096;

/// Sends `request` and reads at most [`MAX_ANSWER_BYTES`] of the answer.
pub fn send(request: &Request, timeouts: Timeouts) -> Result<Answer, TransportError> {
    let outgoing = outgoing_request(request)?;
    let body = outgoing
        .body()
        .map_err(|()| failed("request body already taken"))?;
    {
        let stream = body
            .write()
            .map_err(|()| failed("request body stream unavailable"))?;
        for chunk in request.body.chunks(WRITE_CHUNK) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| failed(&format!("writing the request body: {}", stream_error(e))))?;
        }
    }
    let future = outgoing_handler::handle(outgoing, Some(options(timeouts))).map_err(transport_error)?;
    OutgoingBody::finish(body, None).map_err(transport_error)?;

    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(transport_error(code)),
        Some(Err(())) | None => return Err(failed("response already taken")),
    };
    read_answer(response)
}

fn outgoing_request(request: &Request) -> Result<OutgoingRequest, TransportError> {
    let headers = Fields::new();
    for (name, value) in &request.headers {
        headers
            .append(name, value.as_bytes())
            .map_err(|_| failed(&format!("header {name} refused by the host")))?;
    }
    let outgoing = OutgoingRequest::new(headers);
    let scheme = match request.scheme {
        crate::spec::Scheme::Https => Scheme::Https,
        crate::spec::Scheme::Http => Scheme::Http,
    };
    let set = [
        outgoing.set_method(&Method::Post),
        outgoing.set_scheme(Some(&scheme)),
        outgoing.set_authority(Some(&request.authority)),
        outgoing.set_path_with_query(Some(&request.path)),
    ];
    if set.iter().any(Result::is_err) {
        return Err(failed(
            "host refused the request's method, scheme, authority or path",
        ));
    }
    Ok(outgoing)
}

fn options(t: Timeouts) -> RequestOptions {
    let options = RequestOptions::new();
    let nanos = |d: core::time::Duration| d.as_nanos().min(u64::MAX as u128) as u64;
    // A host that cannot honour a timeout says so by refusing it; its own
    // limits then apply, and the call's overall deadline still holds.
    let _ = options.set_connect_timeout(Some(nanos(t.connect)));
    let _ = options.set_first_byte_timeout(Some(nanos(t.first_byte)));
    let _ = options.set_between_bytes_timeout(Some(nanos(t.between_bytes)));
    options
}

fn read_answer(response: IncomingResponse) -> Result<Answer, TransportError> {
    let status = response.status();
    let headers = response.headers();
    let header = |name: &str| {
        headers
            .get(name)
            .first()
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let retry_after = header("retry-after");
    let declared = header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
    drop(headers);
    if declared.is_some_and(|n| n > MAX_ANSWER_BYTES as u64) {
        return Ok(Answer {
            status,
            retry_after,
            body: Vec::new(),
            oversized: true,
        });
    }

    let incoming = response
        .consume()
        .map_err(|()| failed("response body already taken"))?;
    let stream = incoming
        .stream()
        .map_err(|()| failed("response body stream unavailable"))?;
    let mut body = Vec::new();
    let mut oversized = false;
    loop {
        // One byte past the limit is enough to know the answer is too big.
        let want = (MAX_ANSWER_BYTES + 1 - body.len()) as u64;
        match stream.blocking_read(want) {
            Ok(chunk) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_ANSWER_BYTES {
                    body.truncate(MAX_ANSWER_BYTES);
                    oversized = true;
                    break;
                }
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(failed(&format!(
                    "reading the response body: {}",
                    e.to_debug_string()
                )));
            }
        }
    }
    drop(stream);
    drop(incoming);
    Ok(Answer {
        status,
        retry_after,
        body,
        oversized,
    })
}

fn stream_error(e: StreamError) -> String {
    match e {
        StreamError::Closed => "stream closed".to_string(),
        StreamError::LastOperationFailed(e) => e.to_debug_string(),
    }
}

fn failed(why: &str) -> TransportError {
    TransportError::Failed(why.to_string())
}

fn transport_error(code: ErrorCode) -> TransportError {
    match code {
        ErrorCode::HttpRequestDenied => TransportError::Denied(
            "the host's outbound policy does not allow it (HTTP-request-denied)".into(),
        ),
        ErrorCode::ConnectionTimeout => TransportError::Timeout("connection timed out".into()),
        ErrorCode::ConnectionReadTimeout => {
            TransportError::Timeout("timed out waiting for the answer".into())
        }
        ErrorCode::ConnectionWriteTimeout => TransportError::Timeout("timed out sending the request".into()),
        ErrorCode::InternalError(Some(msg)) => TransportError::Failed(msg),
        other => TransportError::Failed(error_name(&other).into()),
    }
}

/// A short name for the `error-code` cases a token exchange can meet; the
/// derived `Debug` would cost kilobytes of formatting code for the rest.
fn error_name(code: &ErrorCode) -> &'static str {
    match code {
        ErrorCode::DnsTimeout => "DNS timeout",
        ErrorCode::DnsError(_) => "DNS lookup failed",
        ErrorCode::DestinationNotFound => "destination not found",
        ErrorCode::DestinationUnavailable => "destination unavailable",
        ErrorCode::DestinationIpProhibited => "destination IP prohibited",
        ErrorCode::DestinationIpUnroutable => "destination IP unroutable",
        ErrorCode::ConnectionRefused => "connection refused",
        ErrorCode::ConnectionTerminated => "connection terminated",
        ErrorCode::ConnectionReadTimeout => "read timeout",
        ErrorCode::ConnectionLimitReached => "connection limit reached",
        ErrorCode::TlsProtocolError => "TLS protocol error",
        ErrorCode::TlsCertificateError => "TLS certificate error",
        ErrorCode::TlsAlertReceived(_) => "TLS alert received",
        ErrorCode::HttpResponseIncomplete => "incomplete HTTP response",
        ErrorCode::HttpResponseBodySize(_) => "HTTP response body size error",
        ErrorCode::HttpProtocolError => "HTTP protocol error",
        ErrorCode::HttpRequestUriInvalid => "invalid request URI",
        ErrorCode::HttpRequestBodySize(_) => "request body size mismatch",
        _ => "transport error",
    }
}
