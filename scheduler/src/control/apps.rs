//! Apps and their versions: create, change (scale or a new definition), restart,
//! delete, kill with scale, and the history of past definitions.
//!
//! Each call records the change (a version, a deployment) and leaves the tasks to
//! placement (`reconcile`), so that every path to a change of tasks is the same one.

use super::*;

/// The lookup key of an app named with or without slashes: `fib`, `/fib` and `fib/`
/// all become `/fib`.
pub fn app_key(raw: &str) -> String {
    format!("/{}", raw.trim_matches('/'))
}

impl State {
    pub fn app(&self, id: &str) -> Option<&AppDef> {
        self.apps.get(&app_key(id)).map(|a| &a.def)
    }

    pub fn apps(&self) -> impl Iterator<Item = &AppDef> {
        self.apps.values().map(|a| &a.def)
    }

    /// The versions of an app, newest first (`GET /v2/apps/{id}/versions`).
    pub fn versions(&self, id: &str) -> Result<Vec<DateTime<Utc>>> {
        let rt = self
            .apps
            .get(&app_key(id))
            .ok_or_else(|| Error::UnknownApp(app_key(id)))?;
        Ok(rt.versions.iter().rev().map(|d| d.version).collect())
    }

    /// The definition an app had at `version`, if that version is still kept.
    pub fn app_version(&self, id: &str, version: DateTime<Utc>) -> Result<&AppDef> {
        let key = app_key(id);
        let rt = self
            .apps
            .get(&key)
            .ok_or_else(|| Error::UnknownApp(key.clone()))?;
        rt.versions
            .iter()
            .find(|d| d.version == version)
            .ok_or_else(|| Error::UnknownVersion {
                app: key,
                version: version.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            })
    }

    /// Adds a new app and places its tasks. Returns the definition and the id of the
    /// deployment that starts it.
    pub fn create_app(&mut self, def: AppDef, now: Now) -> Result<AppDef> {
        if self.apps.contains_key(&def.id) {
            return Err(Error::AppExists(def.id));
        }
        info!(app = %def.id, instances = def.instances, "app created");
        let mut def = def;
        def.version_info = Some(VersionInfo {
            last_scaling_at: def.version,
            last_config_change_at: def.version,
        });
        self.apps
            .insert(def.id.clone(), AppRuntime::new(def.clone()));
        self.generation += 1;
        self.deploy(&def.id, "StartApplication", None, def.version, now);
        self.place(now);
        Ok(def)
    }

    /// Replaces an app's definition (or creates it). A change of anything but
    /// `instances` replaces its tasks by a rolling deployment that honours the
    /// `upgradeStrategy`; fewer instances kill the highest instance numbers. Returns
    /// whether it was new and the deployment id.
    pub fn put_app(&mut self, def: AppDef, now: Now) -> Result<(bool, String)> {
        let Some(rt) = self.apps.get_mut(&def.id) else {
            let version = def.version;
            let id = def.id.clone();
            self.create_app(def, now)?;
            let dep = self
                .deployments
                .values()
                .find(|d| d.app == id && d.version == version)
                .map(|d| d.id.clone())
                .unwrap_or_default();
            return Ok((true, dep));
        };
        let id = def.id.clone();
        let mut def = def;
        let unchanged = def.same_but_version(&rt.def);
        if unchanged {
            // Nothing to record: the app keeps its version, as its history shows.
            def.version = rt.def.version;
        }
        let config_changed = !rt.def.same_config(&def);
        let (before, after) = (rt.def.instances, def.instances);
        let previous = std::mem::replace(&mut rt.def, def);
        rt.def.version_info = previous.version_info;
        let version = if unchanged {
            rt.def.version
        } else {
            rt.record_version(config_changed)
        };
        if config_changed {
            rt.delay = None;
            rt.launch_after = None;
            rt.restarts.clear();
            rt.config_version = version;
            info!(app = %id, instances = after, "app definition changed; replacing its tasks");
        } else if before != after {
            info!(app = %id, from = before, to = after, "app scaled");
        }
        self.generation += 1;
        let action = if config_changed {
            "RestartApplication"
        } else {
            "ScaleApplication"
        };
        let dep = self.deploy(&id, action, Some(previous), version, now);
        self.place(now);
        Ok((false, dep))
    }

    /// A rolling restart: every task of the app is replaced, honouring the
    /// `upgradeStrategy`. Returns the deployment id and the new version.
    pub fn restart_app(&mut self, id: &str, now: Now) -> Result<(String, DateTime<Utc>)> {
        let key = app_key(id);
        let rt = self
            .apps
            .get_mut(&key)
            .ok_or_else(|| Error::UnknownApp(key.clone()))?;
        let previous = rt.def.clone();
        rt.def.version = now.wall_millis();
        // Marathon counts a restart as a change of configuration: every task is new.
        let version = rt.record_version(true);
        rt.config_version = version;
        self.generation += 1;
        info!(app = %key, "app restart requested");
        let dep = self.deploy(&key, "RestartApplication", Some(previous), version, now);
        self.place(now);
        Ok((dep, version))
    }

    /// Removes an app; its tasks leave the desired sets, so the nodes stop them.
    /// Returns the definition and the deployment id.
    pub fn delete_app(&mut self, id: &str, now: Now) -> Result<(AppDef, String)> {
        let key = app_key(id);
        let rt = self
            .apps
            .remove(&key)
            .ok_or_else(|| Error::UnknownApp(key.clone()))?;
        for t in self.task_ids_of(&key) {
            self.kill(&t, "app deleted", now);
        }
        self.generation += 1;
        info!(app = %key, "app deleted");
        let dep = self.deploy(
            &key,
            "StopApplication",
            Some(rt.def.clone()),
            now.wall_millis(),
            now,
        );
        self.finish_deployments(now);
        Ok((rt.def, dep))
    }

    /// Kills one task of an app (`DELETE /v2/apps/{id}/tasks/{task}`). With `scale`,
    /// the app's instances go down by one so it is not replaced. Returns the task as it
    /// was and, with `scale`, the deployment id.
    pub fn kill_task(
        &mut self,
        app: &str,
        task: &str,
        scale: bool,
        now: Now,
    ) -> Result<(Task, Option<String>)> {
        let key = app_key(app);
        if !self.apps.contains_key(&key) {
            return Err(Error::UnknownApp(key));
        }
        let t = match self.tasks.get(task) {
            Some(t) if t.app == key => t.clone(),
            _ => return Err(Error::UnknownTask(task.to_string())),
        };
        self.kill(task, "killed through the api", now);
        let mut dep = None;
        if scale {
            if let Some(rt) = self.apps.get_mut(&key) {
                let previous = rt.def.clone();
                rt.def.instances = rt.def.instances.saturating_sub(1);
                rt.def.version = now.wall_millis();
                let version = rt.record_version(false);
                self.generation += 1;
                dep = Some(self.deploy(&key, "ScaleApplication", Some(previous), version, now));
            }
        }
        self.place(now);
        Ok((t, dep))
    }

    /// Marathon's `lastTaskFailure` of an app, also set when it cannot be placed.
    pub fn last_failure(&self, app: &str) -> Option<&Value> {
        self.apps
            .get(&app_key(app))
            .and_then(|a| a.last_failure.as_ref())
    }

    /// Why some tasks of the app cannot be placed right now, if that is so.
    pub fn unplaced(&self, app: &str) -> Option<&str> {
        self.apps
            .get(&app_key(app))
            .and_then(|a| a.unplaced.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testkit::*;

    #[test]
    fn app_key_normalises_slashes() {
        assert_eq!(app_key("fib"), "/fib");
        assert_eq!(app_key("/prod/fib/"), "/prod/fib");
    }

    #[test]
    fn killing_a_task_with_scale_lowers_instances_without_replacement() {
        let now = Now::current();
        let mut s = cluster(&["a"], now);
        s.create_app(app("fib", 2), now).unwrap();
        let t = s.desired("a").remove(0);
        let (_, dep) = s.kill_task("fib", &t.task, true, now).unwrap();
        assert!(dep.is_some());
        assert_eq!(s.app("fib").unwrap().instances, 1);
        assert_eq!(s.tasks().count(), 1);
        let t2 = s.desired("a").remove(0);
        let (_, dep) = s.kill_task("fib", &t2.task, false, now).unwrap();
        assert!(dep.is_none());
        assert_eq!(s.desired("a").len(), 1, "replaced");
        assert!(matches!(
            s.kill_task("fib", "nope", false, now),
            Err(Error::UnknownTask(_))
        ));
    }

    #[test]
    fn version_info_moves_scaling_on_kill_with_scale_and_both_on_restart() {
        let now = Now::current();
        let mut s = cluster(&["a"], now);
        s.create_app(app("fib", 2), now).unwrap();
        let created = s.app("fib").unwrap().version;
        let info = |s: &State| s.app("fib").unwrap().version_info.unwrap();
        assert_eq!(info(&s).last_config_change_at, created);
        let t = s.desired("a").remove(0);
        s.kill_task("fib", &t.task, true, now).unwrap();
        let scaled = s.app("fib").unwrap().version;
        assert!(scaled > created);
        assert_eq!(
            info(&s),
            VersionInfo {
                last_scaling_at: scaled,
                last_config_change_at: created
            }
        );
        let (_, restarted) = s.restart_app("fib", now).unwrap();
        assert!(restarted > scaled);
        assert_eq!(
            info(&s),
            VersionInfo {
                last_scaling_at: restarted,
                last_config_change_at: restarted
            }
        );
        // A restored state runs the tasks of the last config change, not of the
        // last scaling: they are adopted, not replaced.
        let mut def = s.app("fib").unwrap().clone();
        def.version = restarted + chrono::Duration::seconds(5);
        def.version_info = Some(VersionInfo {
            last_scaling_at: def.version,
            last_config_change_at: restarted,
        });
        assert_eq!(AppRuntime::new(def).config_version, restarted);
    }

    #[test]
    fn every_change_records_a_version_and_the_history_survives_a_reload() {
        let now = Now::current();
        let mut s = cluster(&["a"], now);
        let at = |ms: i64| now.wall_millis() + chrono::Duration::milliseconds(ms);
        let mut def = app("fib", 1);
        def.version = at(0);
        s.create_app(def.clone(), now).unwrap();
        // Scale only: a version too, as in Marathon.
        def.instances = 2;
        def.version = at(1);
        s.put_app(def.clone(), now).unwrap();
        // The same definition again: nothing changes, no version.
        def.version = at(2);
        s.put_app(def.clone(), now).unwrap();
        assert_eq!(s.app("fib").unwrap().version, at(1));
        def.cmd = Some("sleep 2000".into());
        def.version = at(3);
        s.put_app(def.clone(), now).unwrap();
        let (_, restarted) = s
            .restart_app("fib", now.after(Duration::from_millis(10)))
            .unwrap();
        let versions = s.versions("fib").unwrap();
        assert_eq!(
            versions,
            vec![restarted, at(3), at(1), at(0)],
            "newest first"
        );
        assert_eq!(s.app("fib").unwrap().version, versions[0]);
        assert_eq!(s.app_version("fib", at(0)).unwrap().instances, 1);
        assert_eq!(
            s.app_version("fib", at(1)).unwrap().cmd.as_deref(),
            Some("sleep 1000")
        );
        assert!(matches!(
            s.app_version("fib", at(2)),
            Err(Error::UnknownVersion { .. })
        ));

        let (_, saved) = s.snapshot();
        let json = serde_json::to_vec(&saved).unwrap();
        let back = State::new(
            serde_json::from_slice(&json).unwrap(),
            Duration::from_secs(10),
            now,
        );
        assert_eq!(back.versions("fib").unwrap(), versions);
        assert_eq!(
            back.app_version("fib", at(3)).unwrap(),
            s.app_version("fib", at(3)).unwrap()
        );
    }

    #[test]
    fn versions_are_bounded_and_an_old_state_file_lists_the_current_one() {
        let now = Now::current();
        let mut s = cluster(&[], now);
        let mut def = app("fib", 0);
        for i in 1..=(MAX_VERSIONS as i64 + 5) {
            def.instances = i as u32;
            def.version = now.wall_millis() + chrono::Duration::milliseconds(i);
            s.put_app(def.clone(), now).unwrap();
        }
        let versions = s.versions("fib").unwrap();
        assert_eq!(versions.len(), MAX_VERSIONS);
        assert_eq!(versions[0], def.version, "the newest are kept");

        // Two changes within one millisecond are still two versions, in order.
        let mut quick = app("quick", 1);
        s.create_app(quick.clone(), now).unwrap();
        quick.instances = 2;
        s.put_app(quick.clone(), now).unwrap();
        let v = s.versions("quick").unwrap();
        assert_eq!(
            v,
            vec![
                quick.version + chrono::Duration::milliseconds(1),
                quick.version
            ]
        );
        assert_eq!(s.app("quick").unwrap().version, v[0]);
        assert_eq!(s.app_version("quick", v[1]).unwrap().instances, 1);

        // A state file written before versions were kept: the current one is listed.
        let saved = Saved {
            apps: vec![app("old", 1)],
            ..Saved::default()
        };
        let s = State::new(saved, Duration::from_secs(10), now);
        assert_eq!(s.versions("old").unwrap(), vec![app("old", 1).version]);
    }
}
