//! Deployments: every change of an app is one, tracked until the app's tasks match
//! it, and one can be cancelled (rolled back to the definition before it).
//!
//! A deployment is a record beside the apps, not a plan that drives them: placement
//! (`reconcile`) converges on the app's definition whatever the deployment says, and
//! the deployment ends when that is reached. The trade-off is that a deployment has
//! one step only, which is all Marathon clients read.

use super::*;

/// A deployment in progress: what changed an app, until its tasks match the change.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub id: String,
    /// App id with its leading slash.
    pub app: String,
    pub version: DateTime<Utc>,
    /// Marathon's action name: `StartApplication`, `ScaleApplication`,
    /// `RestartApplication`, `StopApplication`.
    pub action: &'static str,
    /// The definition before the change, for a rollback by `DELETE /v2/deployments`.
    pub previous: Option<AppDef>,
}

impl Deployment {
    /// The deployment as the `plan` of Marathon's `deployment_*` events.
    pub fn plan_json(&self) -> Value {
        let version = self
            .version
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let group = json!({"id": "/", "apps": [], "groups": [], "version": version});
        json!({
            "id": self.id,
            "version": version,
            "original": group,
            "target": group,
            "steps": [{"actions": [{"action": self.action, "app": self.app}]}],
        })
    }

    /// The deployment in Marathon's `GET /v2/deployments` shape.
    pub fn to_json(&self) -> Value {
        let action = json!({"action": self.action, "app": self.app, "readinessCheckResults": []});
        json!({
            "id": self.id,
            "version": self.version.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "affectedApps": [self.app],
            "affectedPods": [],
            "steps": [{"actions": [{"action": self.action, "app": self.app}]}],
            "currentActions": [action],
            "currentStep": 1,
            "totalSteps": 1,
        })
    }
}

impl State {
    pub fn deployments(&self) -> impl Iterator<Item = &Deployment> {
        self.deployments.values()
    }

    /// Starts tracking a change of `app`; a deployment of the same app still running
    /// is superseded. Returns the new deployment's id.
    pub(super) fn deploy(
        &mut self,
        app: &str,
        action: &'static str,
        previous: Option<AppDef>,
        version: DateTime<Utc>,
        now: Now,
    ) -> String {
        let old: Vec<String> = self
            .deployments
            .values()
            .filter(|d| d.app == app)
            .map(|d| d.id.clone())
            .collect();
        for id in old {
            if let Some(d) = self.deployments.remove(&id) {
                info!(app, deployment = %d.id, "deployment superseded");
                self.emit(
                    "deployment_failed",
                    json!({"id": d.id, "plan": d.plan_json(), "reason": "superseded"}),
                    now,
                );
            }
        }
        let d = Deployment {
            id: uuid::Uuid::new_v4().to_string(),
            app: app.to_string(),
            version,
            action,
            previous,
        };
        self.emit(
            "deployment_info",
            json!({"plan": d.plan_json(), "currentStep": d.plan_json()["steps"][0]}),
            now,
        );
        let id = d.id.clone();
        self.deployments.insert(id.clone(), d);
        id
    }

    /// Removes a deployment. With `rollback`, the app goes back to the definition it
    /// had before (a new deployment, whose id is returned); without, the app stays as
    /// it is now (Marathon's `force=true`).
    pub fn cancel_deployment(
        &mut self,
        id: &str,
        rollback: bool,
        now: Now,
    ) -> Result<Option<(String, DateTime<Utc>)>> {
        let d = self
            .deployments
            .remove(id)
            .ok_or_else(|| Error::UnknownDeployment(id.to_string()))?;
        info!(app = %d.app, deployment = id, rollback, "deployment cancelled");
        self.emit(
            "deployment_failed",
            json!({"id": d.id, "plan": d.plan_json(), "reason": "cancelled"}),
            now,
        );
        if !rollback {
            return Ok(None);
        }
        let version = now.wall_millis();
        match d.previous {
            Some(mut prev) => {
                prev.version = version;
                if self.apps.contains_key(&prev.id) {
                    self.put_app(prev, now)?;
                } else {
                    self.create_app(prev, now)?;
                }
            }
            None => {
                self.delete_app(&d.app, now)?;
            }
        }
        let new = self
            .deployments
            .values()
            .find(|x| x.app == d.app)
            .map(|x| x.id.clone())
            .unwrap_or_default();
        // The version the rollback recorded (it may have been moved past the newest).
        let version = self.apps.get(&d.app).map_or(version, |a| a.def.version);
        Ok(Some((new, version)))
    }

    /// Ends the deployments whose app now runs exactly what it should.
    pub(super) fn finish_deployments(&mut self, now: Now) {
        let done: Vec<String> = self
            .deployments
            .values()
            .filter(|d| match self.apps.get(&d.app) {
                None => !self.tasks.values().any(|t| t.app == d.app),
                Some(rt) => {
                    let checks = rt.def.health_checks().len();
                    let tasks: Vec<&Task> =
                        self.tasks.values().filter(|t| t.app == d.app).collect();
                    tasks.len() == rt.def.instances as usize
                        && tasks
                            .iter()
                            .all(|t| t.version == rt.config_version && t.ready(checks))
                }
            })
            .map(|d| d.id.clone())
            .collect();
        for id in done {
            if let Some(d) = self.deployments.remove(&id) {
                info!(app = %d.app, deployment = %d.id, action = d.action, "deployment finished");
                self.emit(
                    "deployment_success",
                    json!({"id": d.id, "plan": d.plan_json()}),
                    now,
                );
            }
        }
    }

    /// The deployments of one app, as Marathon lists them in an app (`[{"id": ..}]`).
    pub fn deployments_of(&self, app: &str) -> Vec<Value> {
        let key = app_key(app);
        self.deployments
            .values()
            .filter(|d| d.app == key)
            .map(|d| json!({"id": d.id}))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testkit::*;

    #[test]
    fn cancelling_a_deployment_rolls_the_app_back() {
        let now = Now::current();
        let mut s = cluster(&["a"], now);
        s.create_app(app("fib", 1), now).unwrap();
        let spec = s.desired("a");
        running(&mut s, "a", &spec, &[], now);
        let (_, dep) = s.put_app(app("fib", 5), now).unwrap();
        let mut small = State::new(Saved::default(), Duration::from_secs(10), now);
        assert!(small.cancel_deployment(&dep, true, now).is_err());
        let out = s.cancel_deployment(&dep, true, now).unwrap();
        assert!(out.is_some());
        assert_eq!(s.app("fib").unwrap().instances, 1);
    }
}
