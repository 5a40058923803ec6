// Package measure reads what processes and the database have spent, for
// tests and benchmarks: a process's CPU time and state from /proc, and
// MariaDB's global status counters; and a process's environment, to check
// what a node passed to its children. It is test support: any harness
// (clustertest, a package's own tests) imports it without cycles, since it
// imports nothing of this repository; runtime code must not (the guard is
// TestOnlyTestsImportMeasure).
package measure

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's CPU times: 100 on
// every Linux this runs on.
const clockTicks = 100

// stat returns /proc/<pid>/stat's fields from the third (state) on. The
// command name (field 2) may hold spaces and parentheses, so the fields
// are those after its last ')'.
func stat(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	return strings.Fields(s[i+1:]), nil
}

// ProcessCPU is the user + system CPU time pid has used so far, its
// reaped children's included. A process that is gone reads as an error.
func ProcessCPU(pid int) (time.Duration, error) {
	f, err := stat(pid)
	if err != nil {
		return 0, err
	}
	// f[0] is field 3 (state); utime, stime, cutime, cstime are fields 14-17.
	if len(f) < 15 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	return sumTicks(f, []int{11, 12, 13, 14}, fmt.Sprintf("/proc/%d/stat", pid), 3)
}

// sumTicks adds the clock-tick counts at f's indexes at as a duration;
// what and first name a field in an error (field number first+index).
func sumTicks(f []string, at []int, what string, first int) (time.Duration, error) {
	var ticks int64
	for _, k := range at {
		n, err := strconv.ParseInt(f[k], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s field %d: %w", what, k+first, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// ProcessState is pid's state letter (R running, S sleeping, Z zombie, X
// dead, ...; proc(5)). A process that is gone, reaped, reads as an error.
func ProcessState(pid int) (byte, error) {
	f, err := stat(pid)
	if err != nil {
		return 0, err
	}
	if len(f) == 0 || f[0] == "" {
		return 0, fmt.Errorf("/proc/%d/stat: no state", pid)
	}
	return f[0][0], nil
}

// Running reports whether pid is a live process: present and neither a
// zombie nor dead.
func Running(pid int) bool {
	s, err := ProcessState(pid)
	return err == nil && s != 'Z' && s != 'X'
}

// ProcessEnv is pid's environment as it started (/proc/<pid>/environ):
// its KEY=value entries in order, duplicates included.
func ProcessEnv(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00"), nil
}

// CPUByRole sums ProcessCPU over each role's processes (role -> PIDs).
// A process that is gone counts nothing.
func CPUByRole(procs map[string][]int) map[string]time.Duration {
	out := map[string]time.Duration{}
	for role, pids := range procs {
		for _, pid := range pids {
			if d, err := ProcessCPU(pid); err == nil {
				out[role] += d
			}
		}
	}
	return out
}

// HostCPU is the CPU time the whole machine has spent busy since boot,
// every process's and the kernel's (user, nice, system, irq, softirq and
// steal from /proc/stat's "cpu" line; idle and iowait are not busy).
// Beside CPUByRole over a window it says how much of the machine a run's
// own processes had and how much went to everything else.
func HostCPU() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	// cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	return sumTicks(f, []int{1, 2, 3, 6, 7, 8}, "/proc/stat cpu", 0)
}
