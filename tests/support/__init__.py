"""Test support code shared by the test layers (fake upstreams, real protocol servers)."""
