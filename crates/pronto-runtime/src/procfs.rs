//! What the node reads about its containers from `/proc` and cgroupfs.

use std::path::Path;

/// Alive and not a zombie (an exited init may wait to be reaped by whoever adopted it).
pub fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| stat_says_alive(&stat))
}

/// `/proc/PID/stat` is `PID (COMM) STATE ...`; COMM may hold spaces and parentheses, so the
/// state follows the *last* `") "`.
fn stat_says_alive(stat: &str) -> bool {
    stat.rsplit_once(") ")
        .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// Reads the cgroup's OOM-kill counter (v1 `memory.oom_control`, v2 `memory.events`).
pub fn oom_killed(cgroups_path: &str) -> bool {
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let file = if v2 {
        format!("/sys/fs/cgroup{cgroups_path}/memory.events")
    } else {
        format!("/sys/fs/cgroup/memory{cgroups_path}/memory.oom_control")
    };
    std::fs::read_to_string(file).is_ok_and(|text| counts_an_oom_kill(&text))
}

/// Both files have a line `oom_kill N`.
fn counts_an_oom_kill(text: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix("oom_kill ")
            .and_then(|n| n.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_states() {
        assert!(stat_says_alive("42 (sh) S 1 42 42 0"));
        assert!(stat_says_alive("42 (my (odd) ) name) R 1"));
        assert!(!stat_says_alive("42 (sh) Z 1 42"));
        assert!(!stat_says_alive("42 (a) Z) X 1"));
        assert!(!stat_says_alive("garbage"));
    }

    #[test]
    fn this_process_is_alive_and_a_free_pid_is_not() {
        assert!(process_alive(std::process::id() as i32));
        assert!(!process_alive(i32::MAX));
    }

    #[test]
    fn oom_counters() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        let v2 = "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert!(counts_an_oom_kill(v1));
        assert!(counts_an_oom_kill(v2));
        assert!(!counts_an_oom_kill("oom 3\noom_kill 0\n"));
        assert!(!counts_an_oom_kill("oom_kill_disable 1\n"));
    }
}
