from ehi_bridge.cli import main

main()
