package measure

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestProcessCPUCountsWork(t *testing.T) {
	before, err := ProcessCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	x := 0
	for start := time.Now(); time.Since(start) < 300*time.Millisecond; {
		x++
	}
	after, err := ProcessCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if after-before < 100*time.Millisecond {
		t.Errorf("300 ms of spinning counted %v of CPU (x=%d)", after-before, x)
	}
	if _, err := ProcessCPU(1 << 30); err == nil {
		t.Error("a process that does not exist read without error")
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
