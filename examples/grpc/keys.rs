//! `portcullis.example.v1.Keys`: a two-method gRPC key service (list the keys, sign
//! with one), and its client.
//!
//! Written out the way `tonic-build` writes generated code, with the messages derived
//! by `prost`, so the example builds without `protoc`. The service definition it
//! stands for:
//!
//! ```proto
//! package portcullis.example.v1;
//! service Keys {
//!   rpc List(ListRequest) returns (ListResponse);
//!   rpc Sign(SignRequest) returns (SignResponse);
//! }
//! message ListRequest {}
//! message ListResponse { repeated string names = 1; }
//! message SignRequest { string key = 1; bytes data = 2; }
//! message SignResponse { bytes signature = 1; }
//! ```

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

pub(crate) const SERVICE: &str = "portcullis.example.v1.Keys";
pub(crate) const LIST: &str = "/portcullis.example.v1.Keys/List";
pub(crate) const SIGN: &str = "/portcullis.example.v1.Keys/Sign";

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ListRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ListResponse {
    #[prost(string, repeated, tag = "1")]
    pub(crate) names: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SignRequest {
    #[prost(string, tag = "1")]
    pub(crate) key: String,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SignResponse {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) signature: Vec<u8>,
}

/// The server: named Ed25519 keys in memory. It trusts the layers in front of it for
/// who may call what.
#[derive(Clone)]
pub(crate) struct KeysServer {
    keys: Arc<BTreeMap<String, Ed25519KeyPair>>,
}

impl KeysServer {
    /// One key, "default".
    pub(crate) fn new() -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| "key generation failed")?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| "bad key")?;
        Ok(Self {
            keys: Arc::new(BTreeMap::from([("default".to_owned(), pair)])),
        })
    }
}

impl NamedService for KeysServer {
    const NAME: &'static str = SERVICE;
}

struct List(KeysServer);

impl UnaryService<ListRequest> for List {
    type Response = ListResponse;
    type Future = BoxFuture<'static, Result<Response<ListResponse>, Status>>;

    fn call(&mut self, _request: Request<ListRequest>) -> Self::Future {
        let names = self.0.keys.keys().cloned().collect();
        Box::pin(async move { Ok(Response::new(ListResponse { names })) })
    }
}

struct Sign(KeysServer);

impl UnaryService<SignRequest> for Sign {
    type Response = SignResponse;
    type Future = BoxFuture<'static, Result<Response<SignResponse>, Status>>;

    fn call(&mut self, request: Request<SignRequest>) -> Self::Future {
        let request = request.into_inner();
        let answer = match self.0.keys.get(&request.key) {
            Some(pair) => Ok(Response::new(SignResponse {
                signature: pair.sign(&request.data).as_ref().to_vec(),
            })),
            None => Err(Status::not_found("no such key")),
        };
        Box::pin(async move { answer })
    }
}

impl tower::Service<http::Request<Body>> for KeysServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let server = self.clone();
        match request.uri().path() {
            LIST => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::default());
                Ok(grpc.unary(List(server), request).await)
            }),
            SIGN => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::default());
                Ok(grpc.unary(Sign(server), request).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// The client side of the same two methods.
#[derive(Clone)]
pub(crate) struct KeysClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl KeysClient {
    pub(crate) fn new(channel: tonic::transport::Channel) -> Self {
        Self {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    pub(crate) async fn list(
        &mut self,
        request: Request<ListRequest>,
    ) -> Result<Response<ListResponse>, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_static(LIST);
        self.grpc.unary(request, path, ProstCodec::default()).await
    }

    pub(crate) async fn sign(
        &mut self,
        request: Request<SignRequest>,
    ) -> Result<Response<SignResponse>, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_static(SIGN);
        self.grpc.unary(request, path, ProstCodec::default()).await
    }
}
