"""One module per hull-runtime verb: FLAGS, USAGE and main(ctx, verb, opts, args)."""
