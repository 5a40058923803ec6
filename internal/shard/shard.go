// Package shard maps a recipient to its shard: crc32(recipient digits) % shards.
//
// The function is part of the public contract (clients may compute shards
// offline), so it must never change: CRC-32 with the IEEE polynomial over the
// ASCII digits of the recipient, every non-digit dropped ("+1 (555) 010-0000"
// and "15550100000" are the same recipient).
package shard

import (
	"fmt"
	"hash/crc32"
)

// Counts are the shard counts the cluster accepts, as in the original product.
var Counts = []int{1, 2, 4, 8, 16, 32}

// ValidCount reports whether n is an accepted shard count.
func ValidCount(n int) bool {
	for _, c := range Counts {
		if c == n {
			return true
		}
	}
	return false
}

// Digits returns the ASCII digits of recipient, in order.
func Digits(recipient string) []byte {
	d := make([]byte, 0, len(recipient))
	for i := 0; i < len(recipient); i++ {
		if c := recipient[i]; c >= '0' && c <= '9' {
			d = append(d, c)
		}
	}
	return d
}

// For returns the shard of recipient among shards. It fails when the
// recipient has no digit or shards is not an accepted count.
func For(recipient string, shards int) (int, error) {
	if !ValidCount(shards) {
		return 0, fmt.Errorf("shard count %d is not one of %v", shards, Counts)
	}
	d := Digits(recipient)
	if len(d) == 0 {
		return 0, fmt.Errorf("recipient %q has no digits", recipient)
	}
	// shards is a power of two, so doubling it moves each key of shard s
	// either nowhere or to s+shards: the property online re-sharding relies on.
	return int(crc32.ChecksumIEEE(d) % uint32(shards)), nil
}
