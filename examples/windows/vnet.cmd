@echo off
rem Runs a vnet node with the config.ini beside this file, like the original's vnet.cmd.
rem To start it at logon, put a shortcut to this file in the Startup folder
rem (Win+R, shell:startup). For the route, use vnet-route instead of vnet.
rem
rem vnet.exe is installed by `pip install vnet` into Python's Scripts folder;
rem if that is not on PATH, replace the vnet line with: py -m vnet config.ini

cd /d "%~dp0"
vnet config.ini
rem Keep the window open when it stopped on an error, so the message can be read.
if errorlevel 1 pause
