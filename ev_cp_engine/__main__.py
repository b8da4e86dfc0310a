from ev_cp_engine.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
