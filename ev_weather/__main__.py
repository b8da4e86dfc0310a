from ev_weather.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
