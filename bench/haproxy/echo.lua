-- An echo service in HAProxy's Lua (a TCP applet, HAProxy 2.6), for
-- hio-bench: each message of SIZE bytes (the argument of lua-load) is read
-- whole and sent back, until the peer closes.
local size = tonumber((...)) or 1024

core.register_service("echo", "tcp", function(applet)
  while true do
    local data = applet:receive(size)
    if data == nil or #data == 0 then
      return
    end
    applet:send(data)
  end
end)
