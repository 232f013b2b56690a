//! What operators' tools see: the standard gRPC health service and server reflection (so
//! `grpcurl` works without the `.proto` files), and a stopping node judged neither serving
//! nor ready.

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

/// One reflection request and its reply, as `grpcurl` sends them.
async fn reflect(
    client: &mut ServerReflectionClient<tonic::transport::Channel>,
    request: MessageRequest,
) -> ServerReflectionResponse {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("the reflection stream opens")
        .into_inner();
    replies
        .message()
        .await
        .expect("the reflection stream answers")
        .expect("one reply")
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let node = jochat_node::spawn_ephemeral().await.unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", node.address()))
        .unwrap()
        .connect()
        .await
        .unwrap();

    // 1. The chat service reports SERVING.
    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(HealthCheckRequest {
            service: "jochat.v1.Chat".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // 2. Reflection lists the chat (v1 and the prototype's), Raft, health and reflection services.
    let mut reflection = ServerReflectionClient::new(channel);
    let reply = reflect(&mut reflection, MessageRequest::ListServices(String::new())).await;
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("expected a service list, got {reply:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ChatService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "jochat.internal.v1.Raft",
            "jochat.v1.Chat"
        ]
    );

    // 3. The chat service's descriptor can be fetched by symbol, as grpcurl does.
    let symbol = MessageRequest::FileContainingSymbol("jochat.v1.Chat".into());
    let reply = reflect(&mut reflection, symbol).await;
    assert!(
        matches!(reply.message_response, Some(MessageResponse::FileDescriptorResponse(ref files)) if !files.file_descriptor_proto.is_empty()),
        "{reply:?}"
    );
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_is_neither_serving_nor_ready() {
    // The judgement behind the health service (`Node::serving`) and `/readyz`
    // (`Node::ready`), on a node started without its server.
    let dir = tempfile::tempdir().unwrap();
    let config = jochat_node::NodeConfig {
        db_file: Some(dir.path().join("node.db")),
        ..jochat_node::NodeConfig::default()
    };
    let node = jochat_node::Node::start(
        config,
        "127.0.0.1:1".into(),
        jochat_node::raft::network::PeerDialer::new(None, None),
        jochat_node::raft::faults::Faults::none(),
    )
    .await
    .unwrap();
    node.wait_for_sole_leadership(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(node.serving(), Ok(()));
    assert_eq!(node.ready(), Ok(()));
    node.begin_shutdown();
    let serving = node.serving().unwrap_err();
    assert!(serving.contains("shutting down"), "{serving}");
    let ready = node.ready().unwrap_err();
    assert!(ready.contains("shutting down"), "{ready}");
    node.close().await;
}
