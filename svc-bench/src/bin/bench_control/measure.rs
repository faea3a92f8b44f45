//! One size measured: the full sync from the fake API server and from manifest files, each
//! polled until the frontend map is complete, then the timed EndpointSlice and Service changes
//! and the wait for each to land in the map.

use super::*;

pub(crate) fn measure_size(n: usize, args: &Args) -> Result<Size> {
    println!("\n== {n} Services × {ENDPOINTS} endpoints: API-server source");
    let t = Topology::build(&TopologySpec::new().node(&[]))?;
    let ul = t.underlay_ns().to_owned();
    // The API server's address lives on the underlay bridge: reachable from the node
    // namespace over its eth0, and nowhere else.
    t.ip(&ul, "addr add 172.18.0.1/16 dev br0")?;
    let listener = t
        .run_in(&ul, || TcpListener::bind("172.18.0.1:0"))?
        .context("binding the fake API server in the underlay namespace")?;
    let server = ApiServer::start(listener)?;
    let kubeconfig = std::env::temp_dir().join(format!("{}kubeconfig", t.prefix()));
    let _kubeconfig_guard = RemoveOnDrop(kubeconfig.clone());
    server.write_kubeconfig(&kubeconfig)?;

    let setup = Instant::now();
    // Services first: a Service write makes the fake server look at the namespace's slices
    // (Endpoints mirroring), which would make creating them after the slices quadratic.
    for i in 0..n {
        server.create_value(service(i))?;
    }
    let mut endpoints: Vec<BTreeSet<usize>> = vec![(0..ENDPOINTS).collect(); n];
    for (i, eps) in endpoints.iter().enumerate() {
        server.create_value(slice(i, eps))?;
    }
    let setup_s = setup.elapsed().as_secs_f64();
    println!("   {n} Services and EndpointSlices created in {setup_s:.1} s");

    let want: Vec<(FrontendKey, u32)> = (0..n)
        .map(|i| (frontend_key(i), ENDPOINTS as u32))
        .collect();
    let spawned = SystemTime::now();
    let clock = Instant::now();
    let mut agent = Agent::start_kube(&t, 1, &kubeconfig, &[])?;
    let kube = wait_full_sync(&t, &mut agent, &want, spawned, clock)?;
    println!(
        "   full sync: maps right {:.2} s, healthz {:.2} s",
        kube.maps_right_s, kube.healthy_s
    );

    let map = frontend_map(&agent)?;
    let before = histogram(&t, &agent).ok();
    let slice_changes = slice_changes(&server, &map, &mut endpoints, args.changes)?;
    let after = histogram(&t, &agent).ok();
    let histogram = before.zip(after).map(|(b, a)| a.minus(&b));
    let (service_creates, service_deletes) =
        service_changes(&server, &map, n, args.service_changes)?;
    let log = agent.stop()?;
    ensure!(
        !log.contains(" ERROR "),
        "the agent logged errors:\n{}",
        tail(&log, 40)
    );
    drop(agent);
    drop(server);
    drop(t);

    let manifests = if args.no_manifests {
        None
    } else {
        println!(
            "== {n} Services × {ENDPOINTS} endpoints: --manifests source, {} Services per file",
            args.per_file
        );
        Some(manifests_full_sync(n, args.per_file.max(1), &want)?)
    };
    Ok(Size {
        services: n,
        setup_s,
        kube,
        manifests,
        slice_changes,
        service_creates,
        service_deletes,
        histogram,
    })
}

/// The same objects as YAML files, and an agent reading them.
pub(crate) fn manifests_full_sync(
    n: usize,
    per_file: usize,
    want: &[(FrontendKey, u32)],
) -> Result<FullSync> {
    let t = Topology::build(&TopologySpec::new().node(&[]))?;
    let dir = ManifestDir::new(&t)?;
    let eps: BTreeSet<usize> = (0..ENDPOINTS).collect();
    // By default 500 Services per file: a few files, as a generated bundle would be.
    for first in (0..n).step_by(per_file) {
        let mut yaml = String::new();
        for i in first..(first + per_file).min(n) {
            for obj in [service(i), slice(i, &eps)] {
                yaml.push_str("---\n");
                yaml.push_str(&serde_saphyr::to_string(&obj)?);
            }
        }
        dir.write(&format!("svc-{first:05}.yaml"), &yaml)?;
    }
    let spawned = SystemTime::now();
    let clock = Instant::now();
    let mut agent = Agent::start(&t, 1, dir.path(), &[])?;
    let sync = wait_full_sync(&t, &mut agent, want, spawned, clock)?;
    println!(
        "   full sync: maps right {:.2} s, healthz {:.2} s",
        sync.maps_right_s, sync.healthy_s
    );
    agent.stop()?;
    Ok(sync)
}

/// Polls until every frontend of `want` is in the map with its count (and nothing else is) and
/// `/healthz` answers 200, then reads the agent's memory and log.
pub(crate) fn wait_full_sync(
    t: &Topology,
    agent: &mut Agent,
    want: &[(FrontendKey, u32)],
    spawned: SystemTime,
    clock: Instant,
) -> Result<FullSync> {
    let mut map: Option<FrontendMap> = None;
    let mut maps_right = None;
    let mut healthy = None;
    while maps_right.is_none() || healthy.is_none() {
        if clock.elapsed() > FULL_SYNC_TIMEOUT {
            bail!(
                "no full sync within {FULL_SYNC_TIMEOUT:?} (maps right: {maps_right:?}, \
                 healthy: {healthy:?}); agent log:\n{}",
                tail(&agent.log(), 40)
            );
        }
        // An exited agent leaves a zombie whose command line is empty.
        if clock.elapsed() > Duration::from_secs(2) && agent_pid(agent.bpffs()).is_none() {
            bail!(
                "the agent exited during its first sync:\n{}",
                tail(&agent.log(), 40)
            );
        }
        if maps_right.is_none() {
            if map.is_none() {
                map = frontend_map(agent).ok();
            }
            if let Some(m) = &map {
                // Newest writes first: the frontends are written in key order, so while the
                // sync is under way the first lookup already fails.
                let all = want.iter().rev().all(|(k, count)| {
                    m.get(k)
                        .is_ok_and(|f| f.is_some_and(|f| f.backend_count == *count))
                });
                if all && m.len() == want.len() {
                    maps_right = Some(clock.elapsed());
                }
            }
        }
        if healthy.is_none() && matches!(agent.http_get(t, "/healthz"), Ok((200, _))) {
            healthy = Some(clock.elapsed());
        }
        std::thread::sleep(FULL_SYNC_POLL);
    }
    let status = agent_pid(agent.bpffs())
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .unwrap_or_default();
    let log = agent.log();
    let at = |needle: &str| log_time(&log, needle, spawned);
    let listed = [at("kind=\"Service\""), at("kind=\"EndpointSlice\"")]
        .into_iter()
        .flatten()
        .reduce(f64::max);
    Ok(FullSync {
        maps_right_s: maps_right.unwrap_or_default().as_secs_f64(),
        healthy_s: healthy.unwrap_or_default().as_secs_f64(),
        loaded_s: at("adopted the service maps"),
        listed_s: listed,
        synced_s: at("full sync: maps match"),
        writes: log
            .lines()
            .find(|l| l.contains("full sync: maps match"))
            .and_then(|l| field(l, "writes=")),
        vm_rss_kib: proc_status_kib(&status, "VmRSS:"),
        vm_hwm_kib: proc_status_kib(&status, "VmHWM:"),
    })
}

/// `changes` EndpointSlice updates, each adding or removing one endpoint of a random Service.
pub(crate) fn slice_changes(
    server: &ApiServer,
    map: &FrontendMap,
    endpoints: &mut [BTreeSet<usize>],
    changes: usize,
) -> Result<Samples> {
    let mut rng = Rng(SEED);
    let mut samples = Samples::default();
    for _ in 0..changes {
        let i = rng.below(endpoints.len());
        let eps = &mut endpoints[i];
        let grow = match eps.len() {
            1 => true,
            ENDPOINT_SLOTS => false,
            _ => rng.below(2) == 0,
        };
        if grow {
            let free: Vec<usize> = (0..ENDPOINT_SLOTS).filter(|j| !eps.contains(j)).collect();
            eps.insert(free[rng.below(free.len())]);
        } else {
            let used: Vec<usize> = eps.iter().copied().collect();
            eps.remove(&used[rng.below(used.len())]);
        }
        let count = eps.len() as u32;
        let key = frontend_key(i);
        server.replace_value(slice(i, eps))?;
        let written = committed(server);
        record(
            &mut samples,
            wait_for(map, &key, |f| f.is_some_and(|f| f.backend_count == count)),
            written,
        );
    }
    Ok(samples)
}

/// `count` new Services (their slices created first, untimed), then their deletion.
pub(crate) fn service_changes(
    server: &ApiServer,
    map: &FrontendMap,
    n: usize,
    count: usize,
) -> Result<(Samples, Samples)> {
    let eps: BTreeSet<usize> = (0..ENDPOINTS).collect();
    let (mut creates, mut deletes) = (Samples::default(), Samples::default());
    for i in n..n + count {
        server.create_value(slice(i, &eps))?;
        server.create_value(service(i))?;
        let written = committed(server);
        let key = frontend_key(i);
        let want = ENDPOINTS as u32;
        record(
            &mut creates,
            wait_for(map, &key, |f| f.is_some_and(|f| f.backend_count == want)),
            written,
        );
    }
    for i in n..n + count {
        server.delete_value("v1", "Service", NAMESPACE, &service_name(i))?;
        let written = committed(server);
        record(
            &mut deletes,
            wait_for(map, &frontend_key(i), |f| f.is_none()),
            written,
        );
        server.delete_value(
            "discovery.k8s.io/v1",
            "EndpointSlice",
            NAMESPACE,
            &slice_name(i),
        )?;
    }
    Ok((creates, deletes))
}

/// When the write just made was committed (see [`ApiServer::last_write_at`] for why not "now").
pub(crate) fn committed(server: &ApiServer) -> Instant {
    server.last_write_at().unwrap_or_else(Instant::now)
}

pub(crate) fn record(samples: &mut Samples, landed: Option<Instant>, written: Instant) {
    match landed {
        Some(at) => samples.ms.push((at - written).as_secs_f64() * 1e3),
        None => samples.timeouts += 1,
    }
}

pub(crate) type FrontendMap = FrontendLookup;

/// The agent's pinned frontend map, opened once and looked up directly (no agent involved).
pub(crate) fn frontend_map(agent: &Agent) -> Result<FrontendMap> {
    Ok(FrontendLookup::open(agent.bpffs())?)
}

/// Spins (with [`CHANGE_POLL`] sleeps) until `done` holds for `key`'s entry; when it first
/// did, or `None` after [`CHANGE_TIMEOUT`].
pub(crate) fn wait_for(
    map: &FrontendMap,
    key: &FrontendKey,
    done: impl Fn(Option<Frontend>) -> bool,
) -> Option<Instant> {
    let deadline = Instant::now() + CHANGE_TIMEOUT;
    loop {
        let Ok(entry) = map.get(key) else {
            return None;
        };
        if done(entry) {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(CHANGE_POLL);
    }
}
