//! The handlers of a cluster's topics: binding, updating and removing them
//! (through the topic's group, so every replica knows them), reading them,
//! and recording how far one got.

use woof_consensus::raft::{Command, CommandResult};
use woof_consensus::topic::TopicName;
use woof_consensus::topic::handlers::{
    From, Handler, HandlerAnswer, HandlerCommand, HandlerSpec, Handlers,
};

use super::ClusterTopics;
use crate::error::{Error, Result};
use crate::groups::{Read, ReadReply};
use crate::handlers::placement;

impl ClusterTopics {
    /// Binds a handler to `topic`, starting where `from` says.
    pub async fn deploy_handler(
        &self,
        topic: &str,
        mut spec: HandlerSpec,
        from: From,
    ) -> Result<Handler> {
        crate::handlers::check(&spec, topic, &self.python).await?;
        spec.per_node = self.check_placement(topic, &spec.placement).await?;
        self.handler_command(topic, HandlerCommand::Deploy { spec, from })
            .await
            .and_then(deployed)
    }

    /// Replaces a handler's code, placement or config.
    pub async fn update_handler(&self, topic: &str, mut spec: HandlerSpec) -> Result<Handler> {
        crate::handlers::check(&spec, topic, &self.python).await?;
        spec.per_node = self.check_placement(topic, &spec.placement).await?;
        self.handler_command(topic, HandlerCommand::Update { spec })
            .await
            .and_then(deployed)
    }

    pub async fn remove_handler(&self, topic: &str, name: &str) -> Result<()> {
        self.handler_command(
            topic,
            HandlerCommand::Remove {
                name: name.to_string(),
            },
        )
        .await
        .map(|_| ())
    }

    /// The handlers bound to `topic` and the topic's last sequence number,
    /// from this node's replica if it holds one, else from the leader.
    pub async fn handlers(&self, topic: &str) -> Result<(Handlers, u64)> {
        let name = TopicName::new(topic)?;
        if let Some(handlers) = self.topics.handlers(&name) {
            let last = self.topics.latest(topic)?.last;
            return Ok((handlers.borrow().as_ref().clone(), last));
        }
        match self.read(&name, Read::Handlers).await? {
            ReadReply::Handlers(handlers, last) => Ok((*handlers, last)),
            other => Err(Error::Internal(format!("reading handlers gave {other:?}"))),
        }
    }

    /// Asks node `peer` to run a handler on one element (an `adaptive()`
    /// invocation), waiting at most `timeout`.
    pub(crate) async fn invoke(
        &self,
        peer: &str,
        invoke: crate::groups::HandlerInvoke,
        timeout: std::time::Duration,
    ) -> Result<crate::groups::InvokeReply> {
        let peer: woof_overlay::PeerId = peer
            .parse()
            .map_err(|_| Error::Internal(format!("{peer:?} is not a peer id")))?;
        self.groups.invoke(peer, invoke, timeout).await
    }

    /// Where a handler of `topic` placed by `placement` runs now: the
    /// chosen node's peer id (for `all(...)`, every match's), or none if no
    /// live node matches. Every node computes the same answer from the same
    /// view of the cluster.
    pub async fn placed_on(&self, topic: &str, placement: &str) -> Result<Vec<String>> {
        let expr = placement::Expr::parse(placement)
            .map_err(|e| Error::Usage(format!("placement {placement:?}: {e}")))?;
        let view = self.describe(topic).await?;
        let leader = view.leader.unwrap_or_default();
        let nodes = self.candidates().await?;
        let topic = placement::Topic {
            leader: &leader,
            replicas: &view.replicas,
        };
        Ok(placement::placements(&expr, &nodes, topic)
            .iter()
            .map(|c| c.peer.to_string())
            .collect())
    }

    /// Refuses a placement that does not parse, cannot place a handler, or
    /// that no live node matches now. Whether it runs one instance on every
    /// node it matches (`all(...)`).
    async fn check_placement(&self, topic: &str, placement: &str) -> Result<bool> {
        let expr = placement::Expr::parse(placement)
            .map_err(|e| Error::Usage(format!("placement {placement:?}: {e}")))?;
        if let Some(why) = expr.misplaced() {
            return Err(Error::Usage(format!("placement {placement:?}: {why}")));
        }
        if self.placed_on(topic, placement).await?.is_empty() {
            return Err(Error::Usage(format!(
                "placement {placement:?}: no live node matches it now"
            )));
        }
        Ok(expr.per_node().is_some())
    }

    /// The topics this node holds replicas of.
    pub(crate) fn local_topics(&self) -> &woof_consensus::Topics {
        &self.topics
    }

    /// Records that handler `name` at `version` finished every element of
    /// `topic` up to `done`. `false`: the record was older than the group's
    /// (another runner got further, or the handler was updated).
    pub(crate) async fn handler_done(
        &self,
        topic: &TopicName,
        name: &str,
        version: u64,
        done: u64,
        outputs: Vec<String>,
        instance: Option<String>,
    ) -> Result<bool> {
        let command = HandlerCommand::Progress {
            name: name.to_string(),
            version,
            done,
            outputs,
            instance,
        };
        match self.handler_command(topic.as_str(), command).await? {
            HandlerAnswer::Progressed(moved) => Ok(moved),
            other => Err(Error::Internal(format!(
                "recording progress gave {other:?}"
            ))),
        }
    }

    /// Parks handler `name` at `version`: it failed on element `seq`.
    pub(crate) async fn park_handler(
        &self,
        topic: &TopicName,
        name: &str,
        version: u64,
        seq: u64,
        error: String,
    ) -> Result<()> {
        let command = HandlerCommand::Park {
            name: name.to_string(),
            version,
            seq,
            error,
        };
        self.handler_command(topic.as_str(), command)
            .await
            .map(|_| ())
    }

    /// Lets a parked handler run again, from the element it failed on.
    pub async fn resume_handler(&self, topic: &str, name: &str) -> Result<Handler> {
        let command = HandlerCommand::Resume {
            name: name.to_string(),
        };
        self.handler_command(topic, command)
            .await
            .and_then(deployed)
    }

    async fn handler_command(&self, topic: &str, command: HandlerCommand) -> Result<HandlerAnswer> {
        let name = TopicName::new(topic)?;
        let (group, members) = self.locate(&name).await?;
        match self
            .write(&name, group, &members, Command::Handler(command))
            .await?
        {
            CommandResult::Handler(answer) => Ok(answer),
            other => Err(Error::Internal(format!("a handler command gave {other:?}"))),
        }
    }
}

fn deployed(answer: HandlerAnswer) -> Result<Handler> {
    match answer {
        HandlerAnswer::Deployed(h) => Ok(*h),
        other => Err(Error::Internal(format!("deploying gave {other:?}"))),
    }
}
