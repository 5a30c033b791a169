%% @doc Loads the Rust NIF that holds the DHT's store and routing table.
%%
%% A failed load is logged with the reason `erlang:load_nif/2' gave (by default the VM only says
%% `on_load_failure') and makes this module fail to load: there is no silent fallback to a
%% slower implementation. `macula_routing_server:start_link/2' turns that into `{error, ...}'.
-module(macula_dht_nif).

-export([new/2, close/1,
         store_put/3, store_get/2, store_delete/3, store_keys/1, store_expire/1,
         table_add/2, table_remove/2, table_closest/3, table_size/1, table_buckets/1,
         stats/1, sha256/1,
         identity/1, net_check/1, net_start/3, net_events/2, net_find_value/4, net_store/3,
         net_address/1, net_peers/1]).

-on_load(load/0).

-define(LIB, "libmacula_dht_nif").

load() ->
    Path = filename:join(priv_dir(), ?LIB),
    case erlang:load_nif(Path, 0) of
        ok ->
            ok;
        {error, {Reason, Text}} = Error ->
            logger:error("macula_dht: cannot load the NIF ~ts.so: ~p: ~ts", [Path, Reason, Text]),
            Error
    end.

priv_dir() ->
    case code:priv_dir(macula_dht) of
        {error, bad_name} ->
            %% Not installed as an application (e.g. only an ebin on the path): priv/ sits beside ebin/.
            filename:join(filename:dirname(filename:dirname(code:which(?MODULE))), "priv");
        Dir ->
            Dir
    end.

new(_LocalId, _Config) -> nif_error().
close(_Node) -> nif_error().
store_put(_Node, _Key, _Provider) -> nif_error().
store_get(_Node, _Key) -> nif_error().
store_delete(_Node, _Key, _NodeId) -> nif_error().
store_keys(_Node) -> nif_error().
store_expire(_Node) -> nif_error().
table_add(_Node, _NodeInfo) -> nif_error().
table_remove(_Node, _NodeId) -> nif_error().
table_closest(_Node, _Target, _Count) -> nif_error().
table_size(_Node) -> nif_error().
table_buckets(_Node) -> nif_error().
stats(_Node) -> nif_error().
sha256(_Data) -> nif_error().
identity(_PathOrUndefined) -> nif_error().
net_check(_Settings) -> nif_error().
net_start(_Node, _IdentityKey, _Settings) -> nif_error().
net_events(_Node, _On) -> nif_error().
net_find_value(_Node, _Key, _Want, _Tag) -> nif_error().
net_store(_Node, _Key, _Provider) -> nif_error().
net_address(_Node) -> nif_error().
net_peers(_Node) -> nif_error().

nif_error() -> erlang:nif_error(nif_not_loaded).
