//! Issue 17, "no input takes it down": property tests over every parser a user's value reaches
//! (cron schedules and `@every` intervals, placement constraints, templates, CIDRs, host route
//! tables) and over the decision itself fed a service whose every time and size field holds a
//! hostile value the validator let through. Nothing may panic; a parsed schedule's next run is
//! after its start. proptest prints the failing case, shrunk; `PROPTEST_CASES` runs more.

use crate::decide::decide;
use crate::inputs::Inputs;
use crate::state::ClusterState;
use crate::testkit::{self, versioned};
use proptest::prelude::*;
use shoal_api::cron::Schedule;
use shoal_api::models::{NodeState, TaskState, TaskStatus};
use shoal_api::validate;

/// A time anywhere chrono can count.
fn any_time() -> impl Strategy<Value = chrono::DateTime<chrono::Utc>> {
    let (lo, hi) = (
        chrono::DateTime::<chrono::Utc>::MIN_UTC.timestamp(),
        chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp(),
    );
    prop_oneof![
        (lo..=hi).prop_map(|s| chrono::DateTime::from_timestamp(s, 0).unwrap_or_default()),
        (1_700_000_000i64..2_000_000_000)
            .prop_map(|s| chrono::DateTime::from_timestamp(s, 0).unwrap_or_default()),
    ]
}

/// Schedules shaped like cron's, with numbers anywhere in u32 and beyond.
fn cron_like() -> impl Strategy<Value = String> {
    let num = prop_oneof![0u64..70, Just(u64::from(u32::MAX)), any::<u64>(),];
    let atom = prop_oneof![
        Just("*".to_string()),
        num.clone().prop_map(|n| n.to_string()),
        (num.clone(), num.clone()).prop_map(|(a, b)| format!("{a}-{b}")),
        Just("mon".to_string()),
        Just("JAN".to_string()),
    ];
    let field = (atom, prop::option::of(num)).prop_map(|(a, step)| match step {
        Some(s) => format!("{a}/{s}"),
        None => a,
    });
    prop_oneof![
        prop::collection::vec(field, 0..7).prop_map(|f| f.join(" ")),
        (any::<u64>(), "[smhdx]{0,2}", any::<u32>(), "[smhd]")
            .prop_map(|(a, u, b, v)| format!("@every {a}{u}{b}{v}")),
        any::<String>(),
        Just("@every 9000000000000s".to_string()),
    ]
}

/// A user's nanoseconds or bytes: small, typical, extreme.
fn user_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(i64::MAX),
        Just(i64::MIN),
        Just(-1i64),
        0i64..10_000_000_000,
        any::<i64>(),
    ]
}

// Case counts keep the fast tier fast (about a second each when the machine is idle); the fuzz
// targets in fuzz/ run the same parsers millions of times.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(5_000))]

    #[test]
    fn schedules_parse_and_run_without_panics(expr in cron_like(), after in any_time()) {
        if let Ok(s) = Schedule::parse(&expr) {
            if let Some(next) = s.next_after(after) {
                prop_assert!(next > after, "{expr:?} after {after}: {next}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn constraints_templates_and_addresses_never_panic(
        text in any::<String>(),
        label in "[a-z.]{0,12}",
        value in any::<String>(),
    ) {
        let node = testkit::node(&serde_json::json!({
            "ID": "n0",
            "Spec": {"Labels": {label.clone(): value.clone()}},
            "Description": {"Hostname": value}
        }).to_string());
        let _ = crate::scheduler::constraint_met(&text, &node);
        let _ = crate::scheduler::constraint_met(&format!("node.labels.{label}=={text}"), &node);
        let _ = shoal_api::template::expand(&text, &shoal_api::template::Context::default());
        if let Ok(c) = text.parse::<shoal_api::dispatch::ipnet_str::Ipv4Cidr>() {
            let _ = crate::allocator::check_subnet("Subnet", &c, &[]);
        }
        let routes = crate::allocator::parse_proc_net_route(&text);
        prop_assert!(routes.iter().all(|r| r.dest.prefix > 0));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A service whose durations, sizes and counts are anything the validator lets through
    /// is planned, placed, restarted and updated over passes that jump far in time, with no
    /// panic.
    #[test]
    fn decisions_take_any_valid_user_value(
        values in prop::collection::vec(user_i64(), 16),
        ratio in any::<f32>(),
        job in any::<bool>(),
        jump in user_i64(),
    ) {
        let v = |i: usize| values[i];
        let mode = if job {
            serde_json::json!({"ReplicatedJob": {"MaxConcurrent": v(0), "TotalCompletions": v(1)}})
        } else {
            serde_json::json!({"Replicated": {"Replicas": v(0)}})
        };
        let mut spec = serde_json::json!({
            "Name": "hostile",
            "TaskTemplate": {
                "ContainerSpec": {"Image": "x", "StopGracePeriod": v(2),
                    "HealthCheck": {"Interval": v(3), "Timeout": v(4), "Retries": v(5), "StartPeriod": v(6)}},
                "RestartPolicy": {"Condition": "any", "Delay": v(7), "MaxAttempts": v(8), "Window": v(9)},
                "Resources": {"Reservations": {"NanoCPUs": v(10), "MemoryBytes": v(11)},
                              "Limits": {"NanoCPUs": v(12), "MemoryBytes": v(13)}},
                "Placement": {"MaxReplicas": v(14)}
            },
            "Mode": mode,
        });
        if !job {
            spec["UpdateConfig"] = serde_json::json!({"Parallelism": v(15), "Delay": v(7),
                "Monitor": v(9), "MaxFailureRatio": ratio, "FailureAction": "rollback"});
        }
        let svc = testkit::service("s0", &spec.to_string());
        // Only what the API would have stored.
        if validate::service_spec(svc.spec()).is_err() {
            return Ok(());
        }
        let mut state = ClusterState::default();
        state.nodes.push(versioned(testkit::node(r#"{"ID": "n0", "Spec": {"Role": "manager", "Availability": "active"},
            "Status": {"State": "ready"}, "Description": {"Resources": {"NanoCPUs": 2000000000, "MemoryBytes": 4000000000}}}"#)));
        state.services.insert("s0".into(), versioned(svc));
        let mut version = 1;
        let mut now = testkit::t0();
        for pass in 0..6u64 {
            let d = decide(&state, &Inputs::new(now, pass));
            testkit::apply(&mut state, d, &mut version);
            // Every task placed runs, then fails: restart policy and update judgement in play.
            for t in &mut state.tasks {
                let next = match t.obj.state() {
                    TaskState::ASSIGNED => TaskState::RUNNING,
                    TaskState::RUNNING => TaskState::FAILED,
                    _ => continue,
                };
                t.obj.task.status = Some(TaskStatus {
                    state: Some(next),
                    timestamp: Some(shoal_api::id::format_time(now)),
                    ..Default::default()
                });
                if next == TaskState::RUNNING {
                    t.obj.running_at = Some(shoal_api::id::format_time(now));
                }
            }
            now = shoal_api::id::later(now, chrono::Duration::nanoseconds(jump.max(0)));
        }
        prop_assert!(state.nodes[0].obj.status.as_ref().and_then(|s| s.state) == Some(NodeState::READY));
    }
}
