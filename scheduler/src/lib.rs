//! The scheduler: Marathon + the Mesos master and agent in one crate.
//!
//! Three parts live here because they share one model of a task:
//! - the control plane (`control`, with `api` its HTTP face): app definitions (typed
//!   and validated in `control::appdef`), the state split by section (apps and
//!   versions, deployments, tasks, agents, reconciliation, metrics), placement onto
//!   registered agents, restarts, the store behind a trait, and the Marathon-style
//!   HTTP API;
//! - the node executor (`node`, with its `logger`, `cgroup`, `task_user`, `ports`,
//!   health checks and sandbox GC): runs on every agent, launches tasks in sandboxes
//!   and reports their state back over HTTP;
//! - Mesos-DNS (`dns`): the control plane's tasks as DNS names, served over UDP and
//!   TCP and through Mesos-DNS's HTTP API;
//! - high availability (`ha`): with `--zk`, a ZooKeeper leader election, the state
//!   kept in ZooKeeper behind fenced writes, and followers forwarding to the leader;
//! - the proxy (`proxy`, "the router" to users): on every agent, carries app-to-app
//!   calls and writes one access record per call into the shipper's pipeline.
//!
//! The parts talk to each other only over HTTP (`/v1/agents/...`, `/v1/services/...`),
//! so the node and proxy run unchanged on another host than the control plane. The
//! trade-off is a poll-based node protocol (heartbeat carries status, answer carries
//! the desired tasks): simple and self-healing, at the cost of up to one heartbeat
//! interval of reaction time.

pub mod api;
pub mod control;
pub mod dns;
pub mod error;
pub mod ha;
pub mod node;
pub mod proxy;

pub use api::{router, Scheduler, SchedulerConfig};
pub use error::{Error, Result};
/// The node protocol's messages, shared with every node through `protocol`.
pub use protocol::{HeartbeatRequest, HeartbeatResponse};
