package clustertest

import (
	"os"
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
