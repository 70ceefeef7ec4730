"""Ray Data stages of the index job: manifest, decode, encode, write. No command-line parsing."""
