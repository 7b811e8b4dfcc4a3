//! What a node tells load balancers, Kubernetes probes and tools such as
//! grpcurl: `grpc.health.v1.Health` for `woof.v1.Woof` and the server as a
//! whole (`""`), and server reflection (v1) over woof's own descriptors.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use woof_consensus::store::RocksStore;

use crate::shutdown::Shutdown;

/// The service whose health is reported besides the server's (`""`).
pub const SERVICE: &str = "woof.v1.Woof";
/// How often the store is checked for a failed write.
const STORAGE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The node's health as the health service reports it: SERVING once it
/// serves, NOT_SERVING from the moment it starts to stop, or once its
/// storage failed (for good: the node cannot promise durability any more).
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
}

impl Health {
    /// A health reporter and the service that answers for it.
    pub fn new() -> (
        Self,
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    ) {
        let (reporter, service) = tonic_health::server::health_reporter();
        (Self { reporter }, service)
    }

    pub async fn serving(&self) {
        self.set(ServingStatus::Serving).await;
    }

    /// Turns NOT_SERVING, saying why in the log.
    pub async fn not_serving(&self, why: &str) {
        tracing::info!("health: NOT_SERVING ({why})");
        self.set(ServingStatus::NotServing).await;
    }

    async fn set(&self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        self.reporter.set_service_status(SERVICE, status).await;
    }

    /// Turns NOT_SERVING if a write to `store` fails, checking every second
    /// until `shutdown`. Holds the store only while looking at it.
    pub async fn watch_storage(self, store: Weak<RocksStore>, shutdown: Shutdown) {
        let mut every = tokio::time::interval(STORAGE_CHECK_EVERY);
        loop {
            tokio::select! {
                () = shutdown.requested() => return,
                _ = every.tick() => {}
            }
            let Some(store) = store.upgrade() else {
                return;
            };
            let failure = store.failure().map(str::to_string);
            drop::<Arc<RocksStore>>(store);
            if let Some(why) = failure {
                self.not_serving(&format!("storage failed: {why}")).await;
                return;
            }
        }
    }
}

/// Server reflection (v1) over woof's service and the health service.
pub fn reflection() -> crate::Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(woof_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| crate::Error::Internal(format!("server reflection: {e}")))
}
