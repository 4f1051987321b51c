//! The updater driven through whole updates: a simulated service whose agents do at once what
//! they are asked, stepped one second at a time.

use super::*;
use crate::orchestrator::replicated;
use shoal_api::models::TaskStatus;
use std::collections::BTreeMap;

/// A replicated service and its tasks, driven by passes and by agents that do at once
/// what they are asked (a task of image "bad" fails as soon as it runs).
struct Sim {
    svc: Versioned<StoredService>,
    tasks: BTreeMap<String, (StoredTask, u64)>,
    now: chrono::DateTime<chrono::Utc>,
    version: u64,
    /// (time, slot) of every replacement that reached running.
    started: Vec<(i64, u64)>,
    /// Tasks told to stop that are still stopping.
    stopping: std::collections::HashSet<String>,
}

fn spec(image: &str, update: serde_json::Value) -> shoal_api::models::ServiceSpec {
    serde_json::from_value(serde_json::json!({
        "Name": "web",
        "Mode": {"Replicated": {"Replicas": 4}},
        "TaskTemplate": {"ContainerSpec": {"Image": image}, "RestartPolicy": {"Delay": 0}},
        "UpdateConfig": update,
        "RollbackConfig": {"Parallelism": 0}
    }))
    .unwrap()
}

impl Sim {
    fn new(update: serde_json::Value) -> Sim {
        let mut s = StoredService::default();
        s.service.id = Some("svc".into());
        s.service.spec = Some(spec("good:1", update));
        s.spec_version = 1;
        let mut sim = Sim {
            svc: Versioned { obj: s, version: 1 },
            tasks: BTreeMap::new(),
            now: id::parse_time("2030-01-01T00:00:00Z").unwrap(),
            version: 1,
            started: Vec::new(),
            stopping: Default::default(),
        };
        sim.run(30);
        sim.started.clear();
        sim
    }

    /// The user's `docker service update --image`.
    fn update(&mut self, image: &str) {
        let mut next = self.svc.obj.spec().clone();
        next.task_template
            .as_mut()
            .unwrap()
            .container_spec
            .as_mut()
            .unwrap()
            .image = Some(image.into());
        let stamp = id::format_time(self.now);
        assert!(self.svc.obj.replace_spec(next, &stamp));
        self.svc.obj.service.update_status = Some(ServiceUpdateStatus {
            state: Some(Status::UPDATING),
            started_at: Some(stamp),
            ..Default::default()
        });
        self.version += 1;
        self.svc.version = self.version;
    }

    fn image(t: &StoredTask) -> String {
        t.task
            .spec
            .as_ref()
            .and_then(|s| s.container_spec.as_ref())
            .and_then(|c| c.image.clone())
            .unwrap_or_default()
    }

    fn set_state(&mut self, id: &str, state: TaskState) {
        self.version += 1;
        let stamp = id::format_time(self.now);
        let (t, v) = self.tasks.get_mut(id).unwrap();
        if state == TaskState::RUNNING {
            t.running_at = Some(stamp.clone());
        }
        t.task.status = Some(TaskStatus {
            state: Some(state),
            timestamp: Some(stamp),
            ..Default::default()
        });
        *v = self.version;
    }

    /// One second: a pass, then every agent acts on it.
    fn step(&mut self) {
        let list: Vec<(&StoredTask, u64)> = self.tasks.values().map(|(t, v)| (t, *v)).collect();
        // The simulation's clock, and a seed that differs every step, so new tasks get
        // distinct IDs.
        let mut plan = Plan::new(&crate::Inputs::new(self.now, self.version));
        let shoal_api::objects::Mode::Replicated(n) = self.svc.obj.mode() else {
            panic!("the simulation runs replicated services");
        };
        replicated::reconcile(&self.svc, n, &list, self.now, &mut plan);
        for (id, (t, _)) in plan.updated {
            self.version += 1;
            self.tasks.insert(id, (t, self.version));
        }
        for mut t in plan.created {
            t.task.node_id = Some("n1".into());
            self.version += 1;
            self.tasks.insert(t.id().to_string(), (t, self.version));
        }
        if let Some((s, v)) = plan.services.remove("svc") {
            assert_eq!(v, self.svc.version, "service written from a stale read");
            self.version += 1;
            self.svc = Versioned {
                obj: s,
                version: self.version,
            };
        }
        let ids: Vec<String> = self.tasks.keys().cloned().collect();
        for id in ids {
            let t = &self.tasks[&id].0;
            let (state, desired, slot) = (t.state(), t.desired(), t.slot());
            let bad = Self::image(t) == "bad:2";
            match desired {
                _ if is_terminal(state) => {}
                // A running container takes a step to stop, as a real one takes time.
                TaskState::SHUTDOWN
                    if state == TaskState::RUNNING && self.stopping.insert(id.clone()) => {}
                TaskState::SHUTDOWN => self.set_state(&id, TaskState::SHUTDOWN),
                TaskState::READY => self.set_state(&id, TaskState::READY),
                TaskState::RUNNING if state == TaskState::RUNNING && bad => {
                    self.set_state(&id, TaskState::FAILED)
                }
                TaskState::RUNNING if state != TaskState::RUNNING => {
                    self.set_state(&id, TaskState::RUNNING);
                    let at =
                        (self.now - id::parse_time("2030-01-01T00:00:00Z").unwrap()).num_seconds();
                    self.started.push((at, slot));
                }
                _ => {}
            }
        }
        self.now += chrono::Duration::seconds(1);
    }

    fn run(&mut self, secs: usize) {
        for _ in 0..secs {
            self.step();
        }
    }

    fn state(&self) -> Option<Status> {
        status(&self.svc.obj)
    }

    fn message(&self) -> String {
        let status = self.svc.obj.service.update_status.as_ref();
        status.and_then(|u| u.message.clone()).unwrap_or_default()
    }

    /// Per slot: (running tasks, running tasks of the current spec).
    fn running(&self) -> BTreeMap<u64, (usize, usize)> {
        let mut out = BTreeMap::new();
        for (t, _) in self.tasks.values() {
            let e = out.entry(t.slot()).or_insert((0, 0));
            if t.state() == TaskState::RUNNING {
                e.0 += 1;
                if t.spec_version == self.svc.obj.spec_version {
                    e.1 += 1;
                }
            }
        }
        out
    }

    /// Per slot: running tasks still meant to run (not the old ones on their way out).
    fn serving(&self) -> BTreeMap<u64, usize> {
        let mut out = BTreeMap::new();
        for (t, _) in self.tasks.values() {
            if t.state() == TaskState::RUNNING && t.meant_to_run() {
                *out.entry(t.slot()).or_insert(0) += 1;
            }
        }
        out
    }
}

#[test]
fn stop_first_never_runs_two_tasks_in_a_slot_and_keeps_parallelism() {
    let mut sim = Sim::new(serde_json::json!({"Parallelism": 2, "Monitor": 3_000_000_000i64}));
    sim.update("good:2");
    for _ in 0..30 {
        sim.step();
        let running = sim.running();
        assert!(
            running.values().all(|(r, _)| *r <= 1),
            "two containers in one slot"
        );
        let down = (1..=4)
            .filter(|s| running.get(s).is_none_or(|(r, _)| *r == 0))
            .count();
        assert!(
            down <= 2,
            "more slots down than the parallelism: {running:?}"
        );
    }
    assert!(sim.running().values().all(|(_, cur)| *cur == 1));
    assert_eq!(sim.state(), Some(Status::COMPLETED));
}

#[test]
fn start_first_keeps_every_slot_serving() {
    let mut sim = Sim::new(serde_json::json!({"Parallelism": 1, "Order": "start-first"}));
    sim.update("good:2");
    for _ in 0..30 {
        sim.step();
        let running = sim.running();
        assert!(
            (1..=4).all(|s| running.get(&s).is_some_and(|(r, _)| *r >= 1)),
            "a slot went dark: {running:?}"
        );
        // An old task told to stop is not counted: like Swarm's, start-first moves on once
        // the replacement runs, without waiting for the old container to exit.
        assert!(
            sim.serving().values().filter(|r| **r == 2).count() <= 1,
            "more than one extra task"
        );
    }
    assert!(sim.running().values().all(|(r, cur)| *r == 1 && *cur == 1));
}

#[test]
fn delay_spaces_the_replacements_and_monitor_holds_completion() {
    let mut sim = Sim::new(
        serde_json::json!({"Parallelism": 1, "Delay": 10_000_000_000i64, "Monitor": 5_000_000_000i64}),
    );
    sim.update("good:2");
    sim.run(29);
    assert_eq!(sim.started.len(), 3, "{:?}", sim.started);
    let gaps: Vec<i64> = sim.started.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(
        gaps.iter().all(|g| *g >= 10),
        "replacements closer than the delay: {gaps:?}"
    );
    sim.run(20);
    let last = sim.started.last().unwrap().0;
    assert_eq!(sim.state(), Some(Status::COMPLETED));
    let done = sim
        .svc
        .obj
        .service
        .update_status
        .as_ref()
        .and_then(|u| u.completed_at.clone());
    let done = (id::parse_time(&done.unwrap()).unwrap()
        - id::parse_time("2030-01-01T00:00:00Z").unwrap())
    .num_seconds();
    assert!(
        done >= last + 5,
        "completed at {done}, before the last task's monitor ({last} + 5)"
    );
}

#[test]
fn a_failing_update_rolls_back_only_what_it_replaced() {
    let mut sim = Sim::new(serde_json::json!({"Parallelism": 1, "FailureAction": "rollback"}));
    sim.update("bad:2");
    let mut steps = 0;
    while sim.state() != Some(Status::ROLLBACK_STARTED) {
        sim.step();
        steps += 1;
        assert!(steps < 20, "no rollback");
    }
    // The tasks the update had not reached yet.
    let untouched: Vec<String> = sim
        .tasks
        .iter()
        .filter(|(_, (t, _))| t.spec_version == 1 && t.state() == TaskState::RUNNING)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(
        !untouched.is_empty(),
        "the update replaced every slot before it noticed"
    );
    let msg = sim.message();
    assert!(
        msg.starts_with("update rolled back due to failure or early termination of task "),
        "{msg}"
    );
    sim.run(20);
    assert_eq!(sim.state(), Some(Status::ROLLBACK_COMPLETED));
    let spec_image = sim
        .svc
        .obj
        .spec()
        .task_template
        .as_ref()
        .and_then(|t| t.container_spec.as_ref())
        .and_then(|c| c.image.clone());
    assert_eq!(spec_image.as_deref(), Some("good:1"));
    assert!(
        untouched
            .iter()
            .all(|id| sim.tasks[id].0.state() == TaskState::RUNNING),
        "the rollback replaced tasks the update never touched"
    );
    assert!(sim.running().values().all(|(r, cur)| *r == 1 && *cur == 1));
}

#[test]
fn a_failing_update_pauses_by_default_and_an_update_call_resumes_it() {
    let mut sim = Sim::new(serde_json::json!({"Parallelism": 1}));
    sim.update("bad:2");
    sim.run(15);
    assert_eq!(sim.state(), Some(Status::PAUSED));
    let msg = sim.message();
    assert!(
        msg.starts_with("update paused due to failure or early termination of task "),
        "{msg}"
    );
    let old = |sim: &Sim| {
        sim.tasks
            .values()
            .filter(|(t, _)| t.spec_version == 1 && t.state() == TaskState::RUNNING)
            .count()
    };
    let at_pause = old(&sim);
    assert!(at_pause >= 1);
    sim.run(10);
    assert_eq!(
        old(&sim),
        at_pause,
        "a paused update went on replacing slots"
    );
    // A fixed image: the update goes on from where it stopped.
    sim.update("good:3");
    sim.run(20);
    assert_eq!(sim.state(), Some(Status::COMPLETED));
    assert!(sim.running().values().all(|(r, cur)| *r == 1 && *cur == 1));
}

#[test]
fn failures_within_the_ratio_are_tolerated() {
    // Every replacement fails (image "bad"), one at a time with parallelism 1 (a failed slot
    // is retried, failing again). One failed task of four slots is 25%, two are 50%: a 0.3
    // ratio lets the first failure pass and pauses at the second; 0.2 pauses at the first.
    let failed = |sim: &Sim| {
        sim.tasks
            .values()
            .filter(|(t, _)| {
                t.state() == TaskState::FAILED && t.spec_version == sim.svc.obj.spec_version
            })
            .count()
    };
    for (ratio, tolerated) in [(0.3, 1), (0.2, 0)] {
        let mut sim = Sim::new(serde_json::json!({"Parallelism": 1, "MaxFailureRatio": ratio}));
        sim.update("bad:2");
        let mut seen = Vec::new();
        for _ in 0..30 {
            sim.step();
            seen.push((failed(&sim), sim.state()));
            if sim.state() == Some(Status::PAUSED) {
                break;
            }
        }
        // A step's agents fail the task after its pass: the next pass sees the failures go
        // past the ratio and pauses, never an earlier one.
        let paused_at = seen.iter().position(|(_, s)| *s == Some(Status::PAUSED));
        let past_ratio = seen.iter().position(|(f, _)| *f > tolerated);
        assert!(paused_at.is_some(), "ratio {ratio}: never paused: {seen:?}");
        assert_eq!(
            paused_at,
            past_ratio.map(|p| p + 1),
            "ratio {ratio}: {seen:?}"
        );
        if tolerated > 0 {
            assert!(
                seen.iter()
                    .any(|(f, s)| *f == tolerated && *s == Some(Status::UPDATING)),
                "ratio {ratio}: a tolerated failure must leave the update going: {seen:?}"
            );
        }
    }
}
