package measure

import (
	"os"
	"os/exec"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"
)

// TestProcessCPUCountsWork spins until the kernel's own account of this
// process (getrusage) grew by 200 ms of CPU, however long that takes on a
// busy machine (a fixed wall-clock spin counted too little when other test
// packages shared the two cores), and checks that ProcessCPU, which reads
// /proc, counted the same work.
func TestProcessCPUCountsWork(t *testing.T) {
	rusage := func() time.Duration { return selfCPU(t) }
	before, err := ProcessCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	ruBefore := rusage()
	x := 0
	for deadline := time.Now().Add(20 * time.Second); rusage()-ruBefore < 200*time.Millisecond; x++ {
		if time.Now().After(deadline) {
			t.Fatalf("20 s of spinning gave %v of CPU by getrusage", rusage()-ruBefore)
		}
	}
	after, err := ProcessCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	spun := rusage() - ruBefore
	// /proc counts in clock ticks (10 ms), getrusage finer.
	if got := after - before; got < spun-50*time.Millisecond || got > spun+200*time.Millisecond {
		t.Errorf("ProcessCPU counted %v for %v of CPU by getrusage (x=%d)", got, spun, x)
	}
	if _, err := ProcessCPU(1 << 30); err == nil {
		t.Error("a process that does not exist read without error")
	}
}

// TestHostCPUCountsThisProcess spins this process for 200 ms of CPU by
// getrusage and checks that the machine's busy time grew by at least that
// (other processes can only add to it) and by no more than the cores could
// have spent in the wall-clock time it took.
func TestHostCPUCountsThisProcess(t *testing.T) {
	rusage := func() time.Duration { return selfCPU(t) }
	before, err := HostCPU()
	if err != nil {
		t.Fatal(err)
	}
	began, ruBefore := time.Now(), rusage()
	for deadline := began.Add(20 * time.Second); rusage()-ruBefore < 200*time.Millisecond; {
		if time.Now().After(deadline) {
			t.Fatalf("20 s of spinning gave %v of CPU by getrusage", rusage()-ruBefore)
		}
	}
	after, err := HostCPU()
	if err != nil {
		t.Fatal(err)
	}
	spun, wall := rusage()-ruBefore, time.Since(began)
	// Both count in clock ticks (10 ms) per CPU: allow a few ticks.
	limit := time.Duration(runtime.NumCPU())*wall + 100*time.Millisecond
	if got := after - before; got < spun-50*time.Millisecond || got > limit {
		t.Errorf("HostCPU grew by %v while this process spun %v in %v of wall-clock time on %d CPUs", got, spun, wall, runtime.NumCPU())
	}
}

// A child that exited but is not yet waited for is a zombie, not
// running; once reaped it is gone.
func TestProcessStateSeesZombies(t *testing.T) {
	if !Running(os.Getpid()) {
		t.Fatal("this process reads as not running")
	}
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, err := ProcessState(pid)
		if err != nil {
			t.Fatalf("child %d before it was waited for: %v", pid, err)
		}
		if s == 'Z' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("child %d still in state %c after 5 s", pid, s)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if Running(pid) {
		t.Error("a zombie reads as running")
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := ProcessState(pid); err == nil {
		t.Error("a reaped process read without error")
	}
	if Running(pid) {
		t.Error("a reaped process reads as running")
	}
}

// selfCPU is this process's user + system CPU time by the kernel's own
// account (getrusage), finer than /proc's clock ticks.
func selfCPU(t *testing.T) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestProcessEnvReadsTheStartingEnvironment starts a child with a known
// environment and reads it back in order. Right after Start the child may
// not have finished exec (its environ reads empty until then), so it reads
// until the child has.
func TestProcessEnvReadsTheStartingEnvironment(t *testing.T) {
	cmd := exec.Command("sleep", "5")
	cmd.Env = []string{"A=1", "B=two words"}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	want := []string{"A=1", "B=two words"}
	var env []string
	for end := time.Now().Add(5 * time.Second); !slices.Equal(env, want); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("ProcessEnv = %q 5 s after the start, want %q", env, want)
		}
		var err error
		if env, err = ProcessEnv(cmd.Process.Pid); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ProcessEnv(1 << 30); err == nil {
		t.Error("a process that does not exist read without error")
	}
}
