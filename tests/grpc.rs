//! gRPC end to end: a real tonic server behind the gateway (over h2c), a real tonic client in
//! front of it. Unary, server-streaming and bidirectional calls; statuses and trailers kept;
//! `grpc-timeout` honoured as the upstream deadline; the gateway's own errors as gRPC statuses.
//!
//! The service messages are the gRPC health protocol's (tonic-health ships them generated), so
//! no proto compiler is needed; `test.Echo` is written by hand the way tonic generates it.

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::TestGateway;
use tokio_stream::StreamExt;
use tonic::codegen::{BoxFuture, http};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_health::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

type Msgs = Pin<Box<dyn tokio_stream::Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

/// `test.Echo`: `Chat` (bidi: one answer per message, SERVING for "up", NOT_SERVING
/// otherwise), `Slow` (unary, answers after 3 s), `Fail` (unary, NOT_FOUND with a trailer).
#[derive(Clone)]
struct Echo;

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

struct Chat;
impl tonic::server::StreamingService<HealthCheckRequest> for Chat {
    type Response = HealthCheckResponse;
    type ResponseStream = Msgs;
    type Future = BoxFuture<Response<Msgs>, Status>;
    fn call(&mut self, req: Request<Streaming<HealthCheckRequest>>) -> Self::Future {
        Box::pin(async move {
            let mut input = req.into_inner();
            let out = async_stream(move |tx| async move {
                while let Some(Ok(m)) = input.next().await {
                    let status = if m.service == "up" {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    };
                    let r = HealthCheckResponse {
                        status: status as i32,
                    };
                    if tx.send(Ok(r)).await.is_err() {
                        break;
                    }
                }
            });
            Ok(Response::new(out))
        })
    }
}

/// A stream fed by a task through a channel.
fn async_stream<F, Fut>(f: F) -> Msgs
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<HealthCheckResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

struct Slow;
impl tonic::server::UnaryService<HealthCheckRequest> for Slow {
    type Response = HealthCheckResponse;
    type Future = BoxFuture<Response<HealthCheckResponse>, Status>;
    fn call(&mut self, _: Request<HealthCheckRequest>) -> Self::Future {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(Response::new(HealthCheckResponse { status: 1 }))
        })
    }
}

struct Fail;
impl tonic::server::UnaryService<HealthCheckRequest> for Fail {
    type Response = HealthCheckResponse;
    type Future = BoxFuture<Response<HealthCheckResponse>, Status>;
    fn call(&mut self, _: Request<HealthCheckRequest>) -> Self::Future {
        Box::pin(async {
            let mut meta = tonic::metadata::MetadataMap::new();
            meta.insert("x-detail", "42".parse().expect("ascii"));
            Err(Status::with_metadata(
                Code::NotFound,
                "no such thing: ünïcode",
                meta,
            ))
        })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for Echo
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let codec =
            || tonic_prost::ProstCodec::<HealthCheckResponse, HealthCheckRequest>::default();
        match req.uri().path() {
            "/test.Echo/Chat" => {
                Box::pin(
                    async move { Ok(tonic::server::Grpc::new(codec()).streaming(Chat, req).await) },
                )
            }
            "/test.Echo/Slow" => {
                Box::pin(
                    async move { Ok(tonic::server::Grpc::new(codec()).unary(Slow, req).await) },
                )
            }
            "/test.Echo/Fail" => {
                Box::pin(
                    async move { Ok(tonic::server::Grpc::new(codec()).unary(Fail, req).await) },
                )
            }
            _ => Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// A tonic server (health + test.Echo) on an ephemeral loopback port, h2c.
async fn grpc_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("users", ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("stable", ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("down", ServingStatus::NotServing)
        .await;
    tokio::spawn(async move {
        // Flip `users` every 100 ms, for the streaming Watch.
        let mut up = true;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            up = !up;
            let s = if up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status("users", s).await;
        }
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .add_service(Echo)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

fn config(target: &str) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nupstreams:\n  grpc:\n    targets: [\"{target}\"]\n    timeouts: {{ response: 10s }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: grpc\n"
    )
}

async fn channel(gw: &TestGateway) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", gw.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the gateway")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_server_streaming_calls_pass_through() {
    let up = grpc_upstream().await;
    let gw = TestGateway::start(&config(&format!("h2c://{up}"))).await;
    let mut client = HealthClient::new(channel(&gw).await);
    let r = client
        .check(HealthCheckRequest {
            service: "users".into(),
        })
        .await
        .expect("unary call");
    assert!(r.get_ref().status == 1 || r.get_ref().status == 2);
    let unknown = client
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(unknown.code(), Code::NotFound, "the upstream's status");

    let mut watch = client
        .watch(HealthCheckRequest {
            service: "users".into(),
        })
        .await
        .expect("streaming call")
        .into_inner();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let m = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .expect("a message within 5 s")
            .expect("no error")
            .expect("the stream goes on");
        seen.push(m.status);
    }
    assert!(seen.contains(&1) && seen.contains(&2), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_call_interleaves() {
    let up = grpc_upstream().await;
    let gw = TestGateway::start(&config(&format!("h2c://{up}"))).await;
    let mut grpc = tonic::client::Grpc::new(channel(&gw).await);
    grpc.ready().await.expect("ready");
    let (tx, rx) = tokio::sync::mpsc::channel::<HealthCheckRequest>(1);
    let path = http::uri::PathAndQuery::from_static("/test.Echo/Chat");
    let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
    tx.send(HealthCheckRequest {
        service: "up".into(),
    })
    .await
    .expect("send");
    let mut answers = grpc
        .streaming(
            Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            path,
            codec,
        )
        .await
        .expect("bidi call")
        .into_inner();
    // Each answer arrives before the next message is sent: the call is not buffered whole.
    for (send, want) in [("down", 1), ("up", 2), ("x", 1)] {
        let m = tokio::time::timeout(Duration::from_secs(5), answers.message())
            .await
            .expect("an answer within 5 s")
            .expect("no error")
            .expect("an answer");
        assert_eq!(m.status, want);
        tx.send(HealthCheckRequest {
            service: send.into(),
        })
        .await
        .expect("send");
    }
    drop(tx);
    let last = answers
        .message()
        .await
        .expect("no error")
        .expect("the last answer");
    assert_eq!(last.status, 2);
    assert!(answers.message().await.expect("clean end").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_trailers_and_deadlines() {
    let up = grpc_upstream().await;
    let gw = TestGateway::start(&config(&format!("h2c://{up}"))).await;
    let mut grpc = tonic::client::Grpc::new(channel(&gw).await);
    let codec = || tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();

    // The upstream's status, message and custom trailer reach the client unchanged.
    grpc.ready().await.expect("ready");
    let err = grpc
        .unary(
            Request::new(HealthCheckRequest::default()),
            http::uri::PathAndQuery::from_static("/test.Echo/Fail"),
            codec(),
        )
        .await
        .expect_err("NOT_FOUND");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no such thing: ünïcode");
    assert_eq!(
        err.metadata().get("x-detail").and_then(|v| v.to_str().ok()),
        Some("42")
    );

    // grpc-timeout is the upstream deadline: the gateway answers DEADLINE_EXCEEDED when it
    // runs out, well before the route's 10 s response timeout. (Sent with a plain HTTP/2
    // client: tonic would enforce the deadline itself and the gateway's answer would not be
    // seen.)
    let req = http::Request::post(format!("http://{}/test.Echo/Slow", gw.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .body(common::full(vec![0u8, 0, 0, 0, 0]))
        .expect("request");
    let started = Instant::now();
    let r = common::send(&common::h2c_client(), req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), Some("4"), "{:?}", r.headers);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_errors_are_grpc_statuses() {
    // Nothing listens at the target: the gateway's 502 becomes UNAVAILABLE, with the request
    // id in the message.
    let gw = TestGateway::start(&config("http://127.0.0.1:1")).await;
    let mut client = HealthClient::new(channel(&gw).await);
    let err = client
        .check(HealthCheckRequest {
            service: "users".into(),
        })
        .await
        .expect_err("no upstream");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("request id"), "{}", err.message());

    // No route: UNIMPLEMENTED.
    let yaml = "listen: \"127.0.0.1:0\"\naccess_log: off\nroutes:\n  - match: { path_prefix: /other }\n    respond: { status: 200 }\n";
    let gw = TestGateway::start(yaml).await;
    let mut client = HealthClient::new(channel(&gw).await);
    let err = client
        .check(HealthCheckRequest::default())
        .await
        .expect_err("no route");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
}

/// Active health checks with the gRPC health protocol: a target whose service is NOT_SERVING
/// goes out of rotation, one that is SERVING stays in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_follow_the_serving_status() {
    let up = grpc_upstream().await;
    let yaml = |service: &str| {
        format!(
            "listen: \"127.0.0.1:0\"\naccess_log: off\nupstreams:\n  grpc:\n    targets: [\"h2c://{up}\"]\n    health:\n      active: {{ grpc: {{ service: {service} }}, interval: 150ms, timeout: 100ms, healthy_threshold: 1, unhealthy_threshold: 1 }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: grpc\n"
        )
    };
    for (service, want_down) in [("down", true), ("stable", false)] {
        let gw = TestGateway::start(&yaml(service)).await;
        // Three check intervals.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let rt = gw.gw.runtime.load();
        let down = rt.upstreams["grpc"].targets[0].live.is_down();
        assert_eq!(down, want_down, "service {service}");
    }
    // A gRPC check on an HTTP/1.1 upstream is a config error.
    let bad = "listen: \"127.0.0.1:0\"\nupstreams:\n  u:\n    targets: [\"http://127.0.0.1:1\"]\n    health: { active: { grpc: {} } }\nroutes:\n  - match: { path_prefix: / }\n    upstream: u\n";
    let cfg = gatehouse::config::parse_str(bad, &|_| None).expect("parses");
    let errors = gatehouse::compile::compile(&cfg, &gatehouse::State::default())
        .err()
        .expect("refused");
    assert!(
        errors
            .iter()
            .any(|e| e.path == "upstreams.u.health.active.grpc"),
        "{errors:?}"
    );
}
