"""What every service shares: config, clock, errors, mTLS, gRPC server and client, db, telemetry.

Importing the kit builds nothing: engines, servers, channels and providers are made by functions
called from a service's `serve(settings)`, so tests build them with their own settings.
"""
