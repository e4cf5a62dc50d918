//! CPU time as the OS counts it: of a whole process (all its threads) or of
//! one thread, user and system separately, from `/proc`.

/// User and system CPU time, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cpu {
    pub user_us: f64,
    pub system_us: f64,
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, earlier: Cpu) -> Cpu {
        Cpu {
            user_us: self.user_us - earlier.user_us,
            system_us: self.system_us - earlier.system_us,
        }
    }
}

/// Whose CPU time to read.
#[derive(Debug, Clone, Copy)]
pub enum Probe {
    /// A whole process: `/proc/PID/stat`.
    Process(u32),
    /// One thread of this process: `/proc/self/task/TID/stat`.
    Thread(i32),
}

impl Probe {
    /// The calling thread.
    pub fn this_thread() -> Probe {
        // SAFETY: gettid has no preconditions.
        Probe::Thread(unsafe { libc::gettid() })
    }

    /// The CPU time so far; zero where `/proc` cannot be read (not Linux).
    pub fn read(self) -> Cpu {
        let path = match self {
            Probe::Process(pid) => format!("/proc/{pid}/stat"),
            Probe::Thread(tid) => format!("/proc/self/task/{tid}/stat"),
        };
        let Ok(stat) = std::fs::read_to_string(path) else {
            return Cpu::default();
        };
        // Fields after the command name (which may hold spaces, so split
        // after its closing parenthesis): utime and stime are the 14th and
        // 15th fields of the line, the 12th and 13th after the name.
        let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let mut fields = rest.split_whitespace().skip(11);
        let ticks = |field: Option<&str>| field.and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        let (user, system) = (ticks(fields.next()), ticks(fields.next()));
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Cpu {
            user_us: user * 1e6 / per_second,
            system_us: system * 1e6 / per_second,
        }
    }
}
