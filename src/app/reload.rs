//! Live reload (SIGHUP): load and validate the file as a whole; refuse it (the running
//! configuration stays) or apply the difference: devices whose configuration changed
//! restart, unchanged ones keep their actor, connection and cache; nodes are added,
//! removed, reconfigured (clients closed only if the node's description changed) and
//! rebound when their listen address or access rules changed. What depends on the
//! configuration elsewhere follows: `/readyz`'s required devices, the nodes discovery
//! answers for (new ones are announced), and the metric series of removed devices,
//! nodes and modules go.

use super::{
    bind, device_specs, identity, node_plans, node_properties, node_settings, serve_at,
    start_device, start_node, AppError, Device, DeviceKind, NodePlan, NodeRun, Running,
};
use crate::config;
use secop_actors::device::StopDevice;
use secop_actors::node::{Reconfigure, StopNode};

/// Why a reload was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] config::LoadError),
    #[error("these settings cannot change at run time (restart the gateway to apply them): {}", .0.join(", "))]
    Fixed(Vec<String>),
    #[error(transparent)]
    Start(#[from] AppError),
    #[error("node {node:?}: the new modules do not fit: {}", problems.join("; "))]
    Node { node: String, problems: Vec<String> },
    #[error("loading the configuration was interrupted: {0}")]
    Interrupted(String),
    #[error("node {node:?} did not answer: {reason}")]
    NodeGone { node: String, reason: String },
}

/// What a reload changed, for the log.
#[derive(Debug, Default)]
pub struct ReloadSummary {
    pub devices_started: Vec<String>,
    pub devices_stopped: Vec<String>,
    pub devices_kept: usize,
    pub nodes_added: Vec<String>,
    pub nodes_removed: Vec<String>,
    pub nodes_described_anew: Vec<String>,
    pub nodes_rebound: Vec<String>,
    /// Steps that failed while the new configuration was applied.
    pub failures: Vec<String>,
}

/// The sections that cannot change at run time, with what differs.
fn fixed_changes(old: &config::Loaded, new: &config::Loaded) -> Vec<String> {
    let (o, n) = (&old.config, &new.config);
    let mut changed = Vec::new();
    let mut listen_o = o.listen.clone();
    let mut listen_n = n.listen.clone();
    listen_o.address.clear();
    listen_n.address.clear();
    if format!("{listen_o:?}") != format!("{listen_n:?}") {
        changed.push("[listen] (other than listen.address)".to_owned());
    }
    let sections = [
        ("[log]", format!("{:?}", o.log), format!("{:?}", n.log)),
        (
            "[metrics]",
            format!("{:?}", o.metrics),
            format!("{:?}", n.metrics),
        ),
        (
            "[discovery]",
            format!("{:?}", o.discovery),
            format!("{:?}", n.discovery),
        ),
        (
            "[audit]",
            format!("{:?}", o.audit),
            format!("{:?}", n.audit),
        ),
        (
            "[state]",
            format!("{:?}", o.state),
            format!("{:?}", n.state),
        ),
        // Each node sized its history buffers at start.
        (
            "[history]",
            format!("{:?}", o.history),
            format!("{:?}", n.history),
        ),
        // Metrics, audit records and the history name the main node by it.
        (
            "node.equipment_id",
            o.node.equipment_id.clone(),
            n.node.equipment_id.clone(),
        ),
        // The metrics port enforces the main node's rules too.
        (
            "node.access",
            format!("{:?}", o.node.access),
            format!("{:?}", n.node.access),
        ),
    ];
    for (name, a, b) in sections {
        if a != b {
            changed.push(name.to_owned());
        }
    }
    changed
}

fn node_name(plan: &NodePlan) -> String {
    plan.equipment_id.clone()
}

impl Running {
    /// Reload from the file the running configuration came from, with the same
    /// `--listen` override. On error nothing has changed.
    pub async fn reload(
        &mut self,
        listen: Option<std::net::SocketAddr>,
    ) -> Result<ReloadSummary, ReloadError> {
        let path = match &self.loaded.origin {
            config::Origin::File(p) => Some(p.clone()),
            config::Origin::Embedded => None,
        };
        // Reading and validating a large file takes a while (in a debug build, tens of
        // milliseconds for 100 modules): off the event loop, so clients are served.
        let new = tokio::task::spawn_blocking(move || config::load(path.as_deref(), listen))
            .await
            .map_err(|e| ReloadError::Interrupted(e.to_string()))??;
        let fixed = fixed_changes(&self.loaded, &new);
        if !fixed.is_empty() {
            return Err(ReloadError::Fixed(fixed));
        }
        let plans = node_plans(&new)?;
        let mut summary = ReloadSummary::default();

        // Devices: reuse those whose configuration is unchanged; start new and changed
        // simulated modules and remotes now (a failure refuses the reload; they hold
        // nothing exclusive, so a changed one serves until the nodes have switched).
        // Links are started only once every check has passed and every old link that
        // is not kept has let go of its port: a serial port is opened exclusively and
        // a Modbus TCP device may take one connection only, and a link renamed, or a
        // new one on a removed link's port, needs that port just the same.
        let mut slots: Vec<Option<Device>> = Vec::new();
        let mut fresh = Vec::new();
        let mut links = Vec::new();
        let specs = device_specs(&new);
        for (slot, spec) in specs.iter().enumerate() {
            let kept = self
                .devices
                .iter()
                .find(|d| *d.handle.name == *spec.name && d.key == spec.key);
            if let Some(d) = kept {
                summary.devices_kept += 1;
                // With its modules as they are now (a remote's change since it started).
                slots.push(Some(Device {
                    key: d.key.clone(),
                    handle: d.handle.current(),
                    link: d.link,
                }));
            } else if matches!(spec.kind, DeviceKind::Link(_)) {
                links.push(slot);
                slots.push(None);
            } else {
                match start_device(&new, spec, self.state.as_ref()).await {
                    Ok(handle) => {
                        fresh.push(handle.name.clone());
                        summary.devices_started.push(spec.name.clone());
                        slots.push(Some(Device {
                            key: spec.key.clone(),
                            handle,
                            link: false,
                        }));
                    }
                    Err(e) => {
                        self.undo(&slots, &fresh).await;
                        return Err(e.into());
                    }
                }
            }
        }

        // Every node must assemble from the devices it will have: a remote's modules
        // are known only now, from its connection, and may collide with others.
        // Refused here, before anything changed (a node that refused its new devices
        // later would be left with stopped ones).
        let device_modules: Vec<_> = specs
            .iter()
            .zip(&slots)
            .map(|(spec, slot)| match (slot, &spec.kind) {
                (Some(d), _) => d.handle.modules.clone(),
                (None, DeviceKind::Link(i)) => {
                    let link = &new.config.links[*i];
                    secop_drivers::describe_link(link, &new.modules_of(&link.name))
                        .unwrap_or_default()
                }
                (None, _) => Vec::new(),
            })
            .collect();
        for plan in &plans {
            let problems = secop_actors::node::assembly_problems(
                &node_settings(&self.shared, &new, plan),
                &plan.equipment_id,
                &plan.description,
                &node_properties(&new, plan),
                &device_modules,
            );
            if !problems.is_empty() {
                self.undo(&slots, &fresh).await;
                return Err(ReloadError::Node {
                    node: node_name(plan),
                    problems,
                });
            }
        }

        // Listeners on addresses no node of ours holds now are bound before anything
        // changes, so that a busy port refuses the reload.
        let held: Vec<_> = self.nodes.iter().map(|n| n.address).collect();
        let mut prebound = Vec::new();
        for plan in &plans {
            let old = self.nodes.iter().find(|n| n.key == plan.key);
            let needs = old.is_none_or(|o| {
                o.address != plan.address || o.access_text != plan.access.to_string()
            });
            let listener = if needs && !held.contains(&plan.address) {
                match bind(plan.address) {
                    Ok(l) => Some(l),
                    Err(source) => {
                        self.undo(&slots, &fresh).await;
                        return Err(AppError::Bind {
                            address: plan.address,
                            source,
                        }
                        .into());
                    }
                }
            } else {
                None
            };
            prebound.push((needs, listener));
        }

        // From here on the new configuration is being applied: a step that still
        // fails (a device that does not start, a node actor that died, a port taken
        // between the check and the bind) is logged as a failure of the reload, and
        // every node stays accounted for, so that later reloads and the shutdown still
        // reach them.
        //
        // Nodes gone (first: they take no more of the time in which links are switched):
        // their listener stops, their clients are closed, the actor ends.
        let mut kept_nodes = Vec::new();
        let mut removed_nodes = Vec::new();
        for run in std::mem::take(&mut self.nodes) {
            if plans.iter().any(|p| p.key == run.key) {
                kept_nodes.push(run);
            } else {
                summary
                    .nodes_removed
                    .push(run.key.clone().unwrap_or_else(|| "main".into()));
                removed_nodes.extend(run.key.clone());
                self.stop_node(run).await;
            }
        }

        // Links: every old link that is not kept stops (together) and its transport
        // closes; then the new and changed ones start.
        let leaving: Vec<_> = self
            .devices
            .iter()
            .filter(|d| {
                d.link
                    && !slots
                        .iter()
                        .flatten()
                        .any(|k| k.handle.name == d.handle.name && k.key == d.key)
            })
            .map(|d| d.handle.clone())
            .collect();
        futures_util::future::join_all(leaving.iter().map(stop_and_wait)).await;
        for slot in links {
            let spec = &specs[slot];
            match start_device(&new, spec, self.state.as_ref()).await {
                Ok(handle) => {
                    fresh.push(handle.name.clone());
                    summary.devices_started.push(spec.name.clone());
                    slots[slot] = Some(Device {
                        key: spec.key.clone(),
                        handle,
                        link: true,
                    });
                }
                Err(e) => summary
                    .failures
                    .push(format!("starting link {}: {e}", spec.name)),
            }
        }
        let devices: Vec<Device> = slots.into_iter().flatten().collect();
        let handles: Vec<_> = devices.iter().map(|d| d.handle.clone()).collect();

        // Every listener that moves stops first, so that addresses swapped between
        // nodes, or vacated by a node later in the list, are free when they are bound;
        // then they are all bound again at once, before any node is reconfigured or
        // added (that may take a poll cycle each): a node is without a listener only
        // for this moment.
        for (plan, (needs_listener, _)) in plans.iter().zip(&prebound) {
            if *needs_listener {
                if let Some(run) = kept_nodes.iter_mut().find(|n| n.key == plan.key) {
                    end_listener(&mut run.listener).await;
                }
            }
        }
        // (Each reconfigured first: on its new listener it takes clients with its new
        // settings only — a view made read-only must not take a write there.)
        let mut reconfigured = Vec::new();
        for (plan, (needs_listener, listener)) in plans.iter().zip(prebound.iter_mut()) {
            let Some(i) = kept_nodes.iter().position(|n| n.key == plan.key) else {
                continue;
            };
            if !*needs_listener {
                continue;
            }
            let run = kept_nodes.swap_remove(i);
            self.reconfigure(&new, plan, &run, &handles, &fresh, &mut summary)
                .await;
            reconfigured.push(plan.key.clone());
            let run = self.rebind(plan, run, listener.take(), &mut summary).await;
            kept_nodes.push(run);
        }

        // Nodes kept (reconfigured) and added.
        let mut nodes = Vec::new();
        for (plan, (_, listener)) in plans.iter().zip(prebound) {
            let position = kept_nodes.iter().position(|n| n.key == plan.key);
            let Some(i) = position else {
                match self.add_node(&new, plan, handles.clone(), listener).await {
                    Ok(run) => {
                        summary.nodes_added.push(node_name(plan));
                        nodes.push(run);
                    }
                    Err(e) => summary
                        .failures
                        .push(format!("adding {}: {e}", node_name(plan))),
                }
                continue;
            };
            let run = kept_nodes.swap_remove(i);
            if !reconfigured.contains(&plan.key) {
                self.reconfigure(&new, plan, &run, &handles, &fresh, &mut summary)
                    .await;
            }
            nodes.push(run);
        }
        self.nodes = nodes;

        // /readyz asks for the new set before any device's series goes.
        self.shared.health.set_required_devices(
            specs
                .iter()
                .filter(|d| d.required)
                .map(|d| d.name.clone())
                .collect(),
        );
        // Devices no longer used stop (links have already); the series of a removed
        // one go once it has stopped (a changed one keeps its name and series).
        let mut removed = Vec::new();
        for old in std::mem::take(&mut self.devices) {
            let reused = devices
                .iter()
                .any(|d| *d.handle.name == *old.handle.name && d.key == old.key);
            if reused {
                continue;
            }
            summary.devices_stopped.push(old.handle.name.to_string());
            if specs.iter().any(|s| *s.name == *old.handle.name) {
                old.handle.stop.do_send(StopDevice);
            } else {
                removed.push(old.handle);
            }
        }
        futures_util::future::join_all(removed.iter().map(stop_and_wait)).await;
        let gone: Vec<&str> = removed.iter().map(|d| &*d.name).collect();
        secop_actors::metrics::metrics().forget_devices(&gone);
        self.devices = devices;
        if let Some(discovery) = &self.discovery {
            let nodes = self
                .nodes
                .iter()
                .filter_map(|run| {
                    let plan = plans.iter().find(|p| p.key == run.key)?;
                    Some((identity(&new, plan), run.bound.port()))
                })
                .collect();
            discovery.replace(nodes).await;
        }
        self.loaded = new;
        self.forget_nodes(removed_nodes).await;
        Ok(summary)
    }

    /// Start, serve and register a node that the new configuration adds.
    async fn add_node(
        &mut self,
        new: &config::Loaded,
        plan: &NodePlan,
        handles: Vec<secop_actors::device::DeviceHandle>,
        listener: Option<tokio::net::TcpListener>,
    ) -> Result<NodeRun, AppError> {
        let node = start_node(&self.shared, new, plan, handles).await?;
        match serve_at(&self.shared, plan, node.clone(), listener, plan.address).await {
            Ok(run) => {
                self.register_health(&run);
                Ok(run)
            }
            Err(e) => {
                // Not served: it must not live on, unseen, taking the devices' updates.
                let _ = node.send(StopNode).await;
                secop_actors::metrics::metrics().forget_node(&plan.equipment_id);
                Err(e)
            }
        }
    }

    /// Stop a node: no new connections, its clients closed, out of the health checks.
    /// Hand a kept node its new settings, description text, properties and devices.
    async fn reconfigure(
        &self,
        new: &config::Loaded,
        plan: &NodePlan,
        run: &NodeRun,
        handles: &[secop_actors::device::DeviceHandle],
        fresh: &[std::sync::Arc<str>],
        summary: &mut ReloadSummary,
    ) {
        let reconfigured = run
            .node
            .send(Reconfigure {
                settings: node_settings(&self.shared, new, plan),
                description: plan.description.clone(),
                properties: node_properties(new, plan),
                devices: handles.to_vec(),
                fresh: fresh.to_vec(),
            })
            .await;
        match reconfigured {
            Ok(Ok(true)) => summary.nodes_described_anew.push(node_name(plan)),
            Ok(Ok(false)) => {}
            Ok(Err(problems)) => summary.failures.push(
                ReloadError::Node {
                    node: node_name(plan),
                    problems,
                }
                .to_string(),
            ),
            Err(e) => summary.failures.push(
                ReloadError::NodeGone {
                    node: node_name(plan),
                    reason: e.to_string(),
                }
                .to_string(),
            ),
        }
    }

    /// Serve a kept node on its new address (or with its new access rules); if that
    /// address cannot be bound, back on the one it had, so that its clients can still
    /// reach it (a later reload tries the new address again).
    async fn rebind(
        &self,
        plan: &NodePlan,
        mut run: NodeRun,
        listener: Option<tokio::net::TcpListener>,
        summary: &mut ReloadSummary,
    ) -> NodeRun {
        match serve_at(&self.shared, plan, run.node.clone(), listener, plan.address).await {
            Ok(rebound) => {
                summary.nodes_rebound.push(node_name(plan));
                return rebound;
            }
            Err(e) => summary
                .failures
                .push(format!("rebinding {}: {e}", node_name(plan))),
        }
        let (old_address, old_access) = (run.address, run.access_text.clone());
        match serve_at(&self.shared, plan, run.node.clone(), None, run.bound).await {
            Ok(restored) => {
                run = restored;
                run.address = old_address;
                run.access_text = old_access;
            }
            Err(e) => summary
                .failures
                .push(format!("{} has no listener: {e}", node_name(plan))),
        }
        run
    }

    /// (Out of the health checks first: a health probe must not find it stopping.)
    /// Its metric series go later, in [`Running::forget_nodes`].
    async fn stop_node(&mut self, mut run: NodeRun) {
        if let Ok(mut list) = self.shared.health.nodes.lock() {
            list.retain(|n| *n != run.node);
        }
        end_listener(&mut run.listener).await;
        let _ = run.node.send(StopNode).await;
    }

    /// Remove the series of nodes a reload removed, once the audit writer has counted
    /// their records still queued (else those series would come back).
    async fn forget_nodes(&self, equipment_ids: Vec<String>) {
        if equipment_ids.is_empty() {
            return;
        }
        let audit = self.shared.audit.clone();
        let _ = tokio::task::spawn_blocking(move || audit.sync(STOP_DEADLINE)).await;
        for id in equipment_ids {
            secop_actors::metrics::metrics().forget_node(&id);
        }
    }

    fn register_health(&self, run: &NodeRun) {
        if let Ok(mut list) = self.shared.health.nodes.lock() {
            list.push(run.node.clone());
        }
    }

    /// [`Running::reload`], logged and counted in the metrics.
    pub async fn reload_logged(&mut self, listen: Option<std::net::SocketAddr>) -> bool {
        let m = secop_actors::metrics::metrics();
        let started = std::time::Instant::now();
        match self.reload(listen).await {
            // Logged first, counted second: whoever sees the count finds the log line.
            Ok(s) => {
                tracing::info!(
                    took_ms = started.elapsed().as_millis() as u64,
                    devices_started = ?s.devices_started,
                    devices_stopped = ?s.devices_stopped,
                    devices_kept = s.devices_kept,
                    nodes_added = ?s.nodes_added,
                    nodes_removed = ?s.nodes_removed,
                    nodes_described_anew = ?s.nodes_described_anew,
                    nodes_rebound = ?s.nodes_rebound,
                    "configuration reloaded"
                );
                if !s.failures.is_empty() {
                    tracing::error!(failures = ?s.failures, "configuration reloaded, but some steps failed");
                }
                m.config_reloads.with_label_values(&["ok"]).inc();
                m.config_last_reload_success
                    .set(secop_actors::device::now());
                true
            }
            Err(e) => {
                tracing::error!(
                    "configuration reload refused, the running configuration stays:\n{e}"
                );
                m.config_reloads.with_label_values(&["refused"]).inc();
                false
            }
        }
    }
}

impl Running {
    /// Undo the devices a refused reload started; the series of those that are not
    /// also running under the old configuration go with them.
    async fn undo(&self, devices: &[Option<Device>], fresh: &[std::sync::Arc<str>]) {
        for d in devices.iter().flatten() {
            if !fresh.contains(&d.handle.name) {
                continue;
            }
            stop_and_wait(&d.handle).await;
            if !self.devices.iter().any(|o| o.handle.name == d.handle.name) {
                secop_actors::metrics::metrics().forget_device(&d.handle.name);
            }
        }
    }
}

/// Stop a listener task and wait until it has ended. Safe on a task that has ended
/// (or been waited for) already: a `JoinHandle` must not be awaited twice.
async fn end_listener(listener: &mut tokio::task::JoinHandle<()>) {
    listener.abort();
    if !listener.is_finished() {
        let _ = listener.await;
    }
}

/// How long a reload waits for a device actor to end (it ends at its next turn on the
/// event loop; its transport closes with it).
const STOP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// Stop a device and wait (at most [`STOP_DEADLINE`]) until its actor is gone, so that
/// its port, connection and metric handles are released.
async fn stop_and_wait(device: &secop_actors::device::DeviceHandle) {
    let deadline = tokio::time::Instant::now() + STOP_DEADLINE;
    let _ = tokio::time::timeout_at(deadline, device.stop.send(StopDevice)).await;
    while device.stop.connected() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}
