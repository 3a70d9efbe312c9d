--- luapos.lua: finds where each field of a declarative Lua job spec is written.
--- A Lua table carries no source positions, so this scans the text of the
--- `return { ... }` constructor and maps field paths ("framework.name",
--- "data_stores[0].id") to {line=, col=, kline=, kcol=}. It only reads text;
--- a spec built by code rather than written out still validates, its
--- messages just point at line 1.
local M = {}

local find, sub = string.find, string.sub

--- Splits SOURCE into tokens {t=kind, v=text, line=, col=}.
local function tokenize(source)
  local tokens, i, line, line_start, n = {}, 1, 1, 1, #source
  local function push(kind, text, at)
    tokens[#tokens + 1] = { t = kind, v = text, line = line, col = at - line_start + 1 }
  end
  local function count_lines(from, to)
    for p in string.gmatch(sub(source, from, to), "()\n") do
      line, line_start = line + 1, from + p
    end
  end
  while i <= n do
    local c = sub(source, i, i)
    if c == "\n" then
      line, line_start, i = line + 1, i + 1, i + 1
    elseif find(c, "%s") then
      i = i + 1
    elseif sub(source, i, i + 1) == "--" then
      local eq = source:match("^%[(=*)%[", i + 2)
      local close = eq and find(source, "]" .. eq .. "]", i, true)
      local stop = close and close + #eq + 1 or (find(source, "\n", i, true) or n + 1) - 1
      count_lines(i, stop)
      i = stop + 1
    elseif c == '"' or c == "'" then
      local j = i + 1
      while j <= n and sub(source, j, j) ~= c and sub(source, j, j) ~= "\n" do
        j = j + (sub(source, j, j) == "\\" and 2 or 1)
      end
      push("string", sub(source, i + 1, j - 1), i)
      i = j + 1
    elseif source:match("^%[=*%[", i) then
      local eq = source:match("^%[(=*)%[", i)
      local close = find(source, "]" .. eq .. "]", i, true) or n
      push("string", sub(source, i + #eq + 2, close - 1), i)
      count_lines(i, close)
      i = close + #eq + 2
    elseif find(c, "[%a_]") then
      local name = source:match("^[%w_]+", i)
      push("name", name, i)
      i = i + #name
    elseif find(c, "%d") then
      local num = source:match("^[%w%.]+", i)
      push("number", num, i)
      i = i + #num
    else
      local two = sub(source, i, i + 1)
      if two == "==" or two == "~=" or two == "<=" or two == ">=" or two == ".." then
        push("op", two, i)
        i = i + 2
      else
        push("op", c, i)
        i = i + 1
      end
    end
  end
  return tokens
end

--- Walks the tokens of the table constructor that follows `return`.
function M.scan(source)
  local tokens, positions = tokenize(source), {}
  local start
  for k = #tokens, 1, -1 do
    if tokens[k].t == "name" and tokens[k].v == "return" then
      start = k
      break
    end
  end
  if not start or not tokens[start + 1] or tokens[start + 1].v ~= "{" then return positions end

  -- frames: one per open brace; path is nil inside values we cannot follow
  local frames = {}
  local function join(path, key)
    if path == nil then return nil end
    if type(key) == "number" then return path .. "[" .. key .. "]" end
    return path == "" and key or (path .. "." .. key)
  end
  local function open(path, at)
    frames[#frames + 1] = { path = path, index = 0, expect = true, parens = 0 }
    if path then positions[path] = positions[path] or { line = at.line, col = at.col } end
  end
  local k = start + 1
  positions[""] = { line = tokens[k].line, col = tokens[k].col }
  open("", tokens[k])
  k = k + 1
  local pending -- path of the value about to start, with its key token
  while k <= #tokens and #frames > 0 do
    local tok, frame = tokens[k], frames[#frames]
    if frame.expect and tok.v ~= "}" then
      frame.expect = false
      local key, key_tok
      if tok.t == "name" and tokens[k + 1] and tokens[k + 1].v == "=" then
        key, key_tok, k = tok.v, tok, k + 2
      elseif tok.v == "[" and tokens[k + 1] and tokens[k + 1].t == "string"
          and tokens[k + 2] and tokens[k + 2].v == "]" and tokens[k + 3] and tokens[k + 3].v == "=" then
        key, key_tok, k = tokens[k + 1].v, tok, k + 4
      else
        key, key_tok = frame.index, tok
        frame.index = frame.index + 1
      end
      pending = { path = join(frame.path, key), key = key_tok }
    else
      local value_start = pending
      pending = nil
      if tok.v == "{" then
        local path = value_start and value_start.path
        open(path, tok)
        if path then
          positions[path].kline, positions[path].kcol = value_start.key.line, value_start.key.col
        end
      elseif tok.v == "}" then
        table.remove(frames)
      elseif tok.v == "(" or tok.v == "[" then
        frame.parens = frame.parens + 1
      elseif tok.v == ")" or tok.v == "]" then
        frame.parens = frame.parens - 1
      elseif (tok.v == "," or tok.v == ";") and frame.parens == 0 then
        frame.expect = true
      end
      if value_start and value_start.path and tok.v ~= "{" and positions[value_start.path] == nil then
        positions[value_start.path] = { line = tok.line, col = tok.col,
          kline = value_start.key.line, kcol = value_start.key.col }
      end
      k = k + 1
    end
  end
  return positions
end

return M
