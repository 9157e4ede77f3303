// tlogcheck: an independent check of the exchange log's evidence, built only on
// the transparency-dev Go libraries (C2SP checkpoints, signed notes, RFC 6962/9162
// proofs), none of the platform's own code.
//
// Usage: tlogcheck EVIDENCE.json
//
// EVIDENCE.json holds {"origin", "vkey", "checkpoint", "leaf" (base64 of the leaf's
// bytes), "leaf_index", "inclusion_proof": [hex...]} and optionally
// {"old_checkpoint", "consistency_proof": [hex...]}. It prints "OK ..." and exits 0
// when the checkpoint is signed by vkey for origin, the leaf is in that tree, and
// the old checkpoint's tree is a prefix of it; otherwise it prints why and exits 1.
package main

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"

	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

type evidence struct {
	Origin           string   `json:"origin"`
	VKey             string   `json:"vkey"`
	Checkpoint       string   `json:"checkpoint"`
	Leaf             string   `json:"leaf"`
	LeafIndex        uint64   `json:"leaf_index"`
	InclusionProof   []string `json:"inclusion_proof"`
	OldCheckpoint    string   `json:"old_checkpoint"`
	ConsistencyProof []string `json:"consistency_proof"`
}

func hashes(hexes []string) ([][]byte, error) {
	out := make([][]byte, 0, len(hexes))
	for _, h := range hexes {
		b, err := hex.DecodeString(h)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

func check(ev evidence) (string, error) {
	verifier, err := note.NewVerifier(ev.VKey)
	if err != nil {
		return "", fmt.Errorf("verifier key: %w", err)
	}
	cp, _, _, err := log.ParseCheckpoint([]byte(ev.Checkpoint), ev.Origin, verifier)
	if err != nil {
		return "", fmt.Errorf("checkpoint: %w", err)
	}
	leaf, err := base64.StdEncoding.DecodeString(ev.Leaf)
	if err != nil {
		return "", fmt.Errorf("leaf: %w", err)
	}
	path, err := hashes(ev.InclusionProof)
	if err != nil {
		return "", fmt.Errorf("inclusion proof: %w", err)
	}
	leafHash := rfc6962.DefaultHasher.HashLeaf(leaf)
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, ev.LeafIndex, cp.Size, leafHash, path, cp.Hash); err != nil {
		return "", fmt.Errorf("inclusion of leaf %d in tree %d: %w", ev.LeafIndex, cp.Size, err)
	}
	msg := fmt.Sprintf("OK leaf %d (%x) in tree %d", ev.LeafIndex, leafHash, cp.Size)
	if ev.OldCheckpoint != "" {
		old, _, _, err := log.ParseCheckpoint([]byte(ev.OldCheckpoint), ev.Origin, verifier)
		if err != nil {
			return "", fmt.Errorf("old checkpoint: %w", err)
		}
		cons, err := hashes(ev.ConsistencyProof)
		if err != nil {
			return "", fmt.Errorf("consistency proof: %w", err)
		}
		if err := proof.VerifyConsistency(rfc6962.DefaultHasher, old.Size, cp.Size, cons, old.Hash, cp.Hash); err != nil {
			return "", fmt.Errorf("consistency %d -> %d: %w", old.Size, cp.Size, err)
		}
		msg += fmt.Sprintf(", consistent with tree %d", old.Size)
	}
	return msg, nil
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: tlogcheck EVIDENCE.json")
		os.Exit(2)
	}
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var ev evidence
	if err := json.Unmarshal(raw, &ev); err != nil {
		fmt.Fprintln(os.Stderr, "evidence:", err)
		os.Exit(2)
	}
	msg, err := check(ev)
	if err != nil {
		fmt.Println("FAIL", err)
		os.Exit(1)
	}
	fmt.Println(msg)
}
